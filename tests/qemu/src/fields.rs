//! Lenient parsing of the logfmt-style fields that cairn's init prints on the
//! serial console, e.g.
//! `[    3.210] INFO cairn_init: service ready service=etcd event=ready pid=212`.

use std::collections::BTreeMap;

/// Removes terminal escape sequences: CSI (`ESC [ ... final`, which covers SGR
/// colours `ESC[1;32m` and cursor moves `ESC[01;01H`), OSC (`ESC ] ... BEL|ESC \`)
/// charset selection (`ESC ( B`) and other two-byte escapes (`ESC c`).
pub fn strip_ansi(s: &str) -> String {
    if !s.contains('\x1b') && !s.contains('\u{9b}') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek().copied() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                Some(']') => {
                    chars.next();
                    // OSC: until BEL or ST (ESC \)
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                Some('(') | Some(')') | Some('*') | Some('+') => {
                    chars.next();
                    chars.next(); // charset designator
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            c => out.push(c),
        }
    }
    out
}

fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    // parameter bytes 0x30-0x3F, intermediate bytes 0x20-0x2F, final byte 0x40-0x7E
    for c in chars.by_ref() {
        if ('\x40'..='\x7e').contains(&c) {
            break;
        }
        if !('\x20'..='\x3f').contains(&c) {
            // malformed sequence: stop swallowing
            break;
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/')
}

/// Parses `key=value` tokens out of a console line.
///
/// * ANSI escape sequences are stripped first, trailing `\r`/`\n` ignored.
/// * A token starts at the beginning of the line or after whitespace; its key
///   is `[A-Za-z0-9_.\-:/]+` (not starting with `-`), followed by `=`.
/// * A value is either bare (up to the next whitespace) or a double-quoted
///   string with backslash escapes (`\"`, `\\`, `\n`, `\r`, `\t`, `\0`, `\'`,
///   `\u{..}`; unknown escapes keep the escaped character). An unterminated
///   quote takes the rest of the line.
/// * Anything else (message text, timestamps, kernel output) is skipped.
///   A repeated key keeps its last value.
pub fn parse_fields(line: &str) -> BTreeMap<String, String> {
    let clean = strip_ansi(line);
    let s = clean.trim_end_matches(['\r', '\n']);
    let chars: Vec<char> = s.chars().collect();
    let mut out = BTreeMap::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        // skip whitespace
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n {
            break;
        }
        // try key
        let start = i;
        while i < n && is_key_char(chars[i]) {
            i += 1;
        }
        if i > start && i < n && chars[i] == '=' && chars[start] != '-' {
            let key: String = chars[start..i].iter().collect();
            i += 1; // '='
            let value;
            if i < n && chars[i] == '"' {
                i += 1;
                let (v, next) = parse_quoted(&chars, i);
                value = v;
                i = next;
            } else {
                let vs = i;
                while i < n && !chars[i].is_whitespace() {
                    i += 1;
                }
                value = chars[vs..i].iter().collect();
            }
            out.insert(key, value);
        }
        // skip the rest of this token
        while i < n && !chars[i].is_whitespace() {
            i += 1;
        }
    }
    out
}

/// Parses a quoted string whose opening quote precedes `i`; returns the value
/// and the index just past the closing quote.
fn parse_quoted(chars: &[char], mut i: usize) -> (String, usize) {
    let n = chars.len();
    let mut v = String::new();
    while i < n {
        let c = chars[i];
        i += 1;
        match c {
            '"' => return (v, i),
            '\\' if i < n => {
                let e = chars[i];
                i += 1;
                match e {
                    'n' => v.push('\n'),
                    'r' => v.push('\r'),
                    't' => v.push('\t'),
                    '0' => v.push('\0'),
                    'u' if i < n && chars[i] == '{' => {
                        let close = chars[i..].iter().position(|&c| c == '}').map(|p| p + i);
                        let decoded = close.and_then(|close| {
                            let hex: String = chars[i + 1..close].iter().collect();
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .map(|c| (c, close))
                        });
                        match decoded {
                            Some((c, close)) => {
                                v.push(c);
                                i = close + 1;
                            }
                            None => {
                                v.push('\\');
                                v.push('u');
                            }
                        }
                    }
                    other => v.push(other),
                }
            }
            c => v.push(c),
        }
    }
    (v, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(line: &str) -> Vec<(String, String)> {
        parse_fields(line).into_iter().collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn bare_fields() {
        assert_eq!(
            f("[    3.210] INFO cairn_init: service ready service=etcd event=ready pid=212"),
            kv(&[("service", "etcd"), ("event", "ready"), ("pid", "212")])
        );
        assert_eq!(
            f("[    1.002] INFO cairn_init: root switched event=root_switched slot=a\r\n"),
            kv(&[("event", "root_switched"), ("slot", "a")])
        );
    }

    #[test]
    fn quoted_with_spaces_and_escapes() {
        let line = "[    5.000] ERROR cairn_init: machine config rejected event=config_error error=\"machine.yaml line 3: unknown field `hostnme`\"";
        assert_eq!(
            f(line),
            kv(&[
                ("event", "config_error"),
                ("error", "machine.yaml line 3: unknown field `hostnme`")
            ])
        );
        let m = parse_fields(r#"x msg="say \"hi\" \\ back\nslash\t!" tail=1 uni="\u{e9}t\u{e9}""#);
        assert_eq!(m["msg"], "say \"hi\" \\ back\nslash\t!");
        assert_eq!(m["tail"], "1");
        assert_eq!(m["uni"], "été");
        // escaped quote followed by space does not end the value
        let m = parse_fields(r#"a="x\" y=z" b=2"#);
        assert_eq!(m["a"], "x\" y=z");
        assert_eq!(m["b"], "2");
        assert!(!m.contains_key("y"));
    }

    #[test]
    fn crlf_and_empty_values() {
        let m = parse_fields("event=ready slot=\r\n");
        assert_eq!(m["event"], "ready");
        assert_eq!(m["slot"], "");
        let m = parse_fields("event=\"\"\r");
        assert_eq!(m["event"], "");
    }

    #[test]
    fn ansi_colours_are_stripped() {
        // what tracing-subscriber's fmt layer prints with ANSI on
        let line = "\x1b[2m[    3.210]\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mcairn_init\x1b[0m\x1b[2m:\x1b[0m service ready \x1b[3mservice\x1b[0m\x1b[2m=\x1b[0metcd \x1b[3mevent\x1b[0m\x1b[2m=\x1b[0mready\r\n";
        assert_eq!(f(line), kv(&[("service", "etcd"), ("event", "ready")]));
        assert_eq!(
            strip_ansi("\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: x \x1b[1m\x1b[37m\x1b[40miPXE\x1b[0m"),
            "BdsDxe: x iPXE"
        );
        assert_eq!(strip_ansi("a\x1b]0;title\x07b\x1b(Bc"), "abc");
    }

    #[test]
    fn lenient_on_noise() {
        assert!(parse_fields("").is_empty());
        assert!(parse_fields("Linux version 6.1.0 (gcc 12)").is_empty());
        assert!(parse_fields("a == b").is_empty());
        assert!(parse_fields("=value").is_empty());
        assert!(parse_fields("--flag=1").is_empty());
        // unterminated quote takes the rest
        assert_eq!(parse_fields("error=\"oops no end")["error"], "oops no end");
        // keys are only recognised at token starts
        let m = parse_fields("foo(bar=1) k=v");
        assert_eq!(m.len(), 1);
        assert_eq!(m["k"], "v");
        // repeated key: last wins
        assert_eq!(parse_fields("k=1 k=2")["k"], "2");
        // kernel command line is fields too (lenient)
        assert_eq!(
            parse_fields("Command line: console=ttyS0 panic=-1")["panic"],
            "-1"
        );
        // malformed escape sequence at the end of the line
        assert_eq!(parse_fields("k=v \x1b")["k"], "v");
        assert_eq!(parse_fields("k=\"a\\")["k"], "a\\");
    }
}
