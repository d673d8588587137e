//! Property tests of the secrets bundle, which arrives from outside the node
//! (fw_cfg, the machine API): no document makes parsing or checking panic, and a
//! damaged bundle is refused by the check, never taken as valid.

use std::sync::OnceLock;

use cairn_pki::{Bundle, ClusterParams, Hostname, OffsetDateTime, check, generate};
use proptest::prelude::*;
use proptest::sample::Index;

fn params() -> ClusterParams {
    let node = Hostname::try_from("node-1".to_string()).expect("hostname");
    let now = OffsetDateTime::from_unix_timestamp(1_780_000_000).expect("time");
    ClusterParams::new(node, "10.0.2.15".parse().expect("ip"), now)
}

/// One generated bundle as a document, for every case.
fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        generate(&params())
            .expect("generate")
            .to_document()
            .expect("document")
    })
}

#[test]
fn the_generated_document_round_trips_and_checks() {
    let bundle = Bundle::from_document(document()).expect("parse");
    check(&bundle, &params()).expect("a fresh bundle fits its node");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_is_refused_or_parsed(text in any::<String>()) {
        let _ = Bundle::from_document(&text);
    }

    /// Byte edits anywhere in a real document: refused while parsing, refused by
    /// the check, or harmless (an edit in a place nothing reads).
    #[test]
    fn edited_documents_are_refused_or_harmless(edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..4)) {
        let mut bytes = document().as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(bundle) = Bundle::from_document(&text) {
            let _ = check(&bundle, &params());
        }
    }
}
