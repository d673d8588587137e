//! The kernel command line: `cairn.*` switches.

use std::collections::BTreeMap;

/// Parsed `key=value` and bare `key` words (bare keys map to "").
#[derive(Debug, Default, Clone)]
pub struct Cmdline(BTreeMap<String, String>);

impl Cmdline {
    pub fn read() -> Cmdline {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    pub fn parse(s: &str) -> Cmdline {
        Cmdline(
            s.split_whitespace()
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (w.to_string(), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `key`, `key=1`, `key=yes` or `key=true` set a flag.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("" | "1" | "yes" | "true"))
    }

    /// The system slot to boot (`cairn.slot=a|b`), default `a`.
    pub fn slot(&self) -> char {
        match self.get("cairn.slot") {
            Some("b" | "B") => 'b',
            _ => 'a',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words() {
        let c = Cmdline::parse("console=ttyS0 cairn.slot=b quiet cairn.hold=0\n");
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.slot(), 'b');
        assert!(c.flag("quiet"));
        assert!(!c.flag("cairn.hold"));
        assert_eq!(Cmdline::parse("").slot(), 'a');
    }
}
