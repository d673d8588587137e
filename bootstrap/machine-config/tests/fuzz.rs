//! Property tests of the machine config parser, which reads outside input (fw_cfg,
//! the machine API): no input makes it panic, and every refusal says what and where.

use cairn_machine_config::MachineConfig;
use proptest::prelude::*;
use proptest::sample::Index;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_is_refused_or_parsed(text in any::<String>()) {
        if let Err(e) = MachineConfig::parse("fuzz", &text) {
            prop_assert!(e.to_string().starts_with("fuzz: "), "{e}");
        }
    }

    /// Byte edits of the default document: still parsed, or refused with a message
    /// that names the source.
    #[test]
    fn edited_default_document(edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6)) {
        let mut bytes = MachineConfig::default_document().as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = MachineConfig::parse("edited", &text) {
            prop_assert!(e.to_string().contains("edited"), "{e}");
        }
    }

    /// Any prefix of the default document (a truncated transfer).
    #[test]
    fn truncated_default_document(cut in any::<Index>()) {
        let doc = MachineConfig::default_document();
        let mut end = cut.index(doc.len());
        while !doc.is_char_boundary(end) {
            end -= 1;
        }
        let _ = MachineConfig::parse("truncated", &doc[..end]);
    }
}
