//! The DNS wire format (RFC 1035), only as much as an A query needs: encoding
//! one question with recursion desired, and decoding a reply's header,
//! question and answer section (A and CNAME records; compressed names).

use std::fmt;
use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const CLASS_IN: u16 = 1;

/// Response codes worth naming in messages.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_NXDOMAIN: u8 = 3;

const HEADER_LEN: usize = 12;
/// RFC 1035 2.3.4.
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
/// Compression pointers followed before a name is called a loop.
const MAX_POINTERS: usize = 64;

/// A malformed name to encode or a malformed message to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The name cannot be put into a question.
    BadName { name: String, reason: &'static str },
    /// The message ends before the field being read.
    Short { at: usize, what: &'static str },
    /// The message is not a reply to the question asked.
    NotOurs { reason: String },
    /// A name in the message is malformed (bad label type, pointer loop, too long).
    BadMessageName { at: usize, reason: &'static str },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadName { name, reason } => write!(f, "name {name:?}: {reason}"),
            WireError::Short { at, what } => {
                write!(f, "message too short: {what} at byte {at}")
            }
            WireError::NotOurs { reason } => write!(f, "not a reply to our query: {reason}"),
            WireError::BadMessageName { at, reason } => {
                write!(f, "malformed name at byte {at}: {reason}")
            }
        }
    }
}

/// A decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    pub rcode: u8,
    /// TC: the answer did not fit into the UDP message.
    pub truncated: bool,
    /// The A records of the queried name, following CNAMEs, in answer order.
    pub addrs: Vec<Ipv4Addr>,
}

/// The rcode's mnemonic, for messages.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("rcode {n}"),
    }
}

/// A standard query for the A records of `name` (fully qualified, with or
/// without the trailing dot), recursion desired.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, WireError> {
    let mut msg = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&0x0100u16.to_be_bytes()); // QR=0, opcode 0, RD=1
    msg.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    msg.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
    encode_name(name, &mut msg)?;
    msg.extend_from_slice(&TYPE_A.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let bad = |reason| WireError::BadName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let start = out.len();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| usize::from(*l) <= MAX_LABEL_LEN)
            .ok_or_else(|| bad("has a label longer than 63 bytes"))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - start > MAX_NAME_LEN {
        return Err(bad("longer than 255 bytes"));
    }
    Ok(())
}

/// Decodes a reply to [`encode_query`]`(_, name)`. A reply with another
/// question, or that is not a reply at all, is [`WireError::NotOurs`]; the
/// caller compares the id.
pub fn decode_reply(msg: &[u8], name: &str) -> Result<Reply, WireError> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16("header id")?;
    let flags = r.u16("header flags")?;
    let qdcount = r.u16("question count")?;
    let ancount = r.u16("answer count")?;
    r.u16("authority count")?;
    r.u16("additional count")?;
    if flags & 0x8000 == 0 {
        return Err(WireError::NotOurs {
            reason: "QR bit clear (a query, not a reply)".into(),
        });
    }
    let rcode = (flags & 0x000f) as u8;
    let truncated = flags & 0x0200 != 0;
    let wanted = name.strip_suffix('.').unwrap_or(name);
    match qdcount {
        // Some servers drop the question from error replies.
        0 => {}
        1 => {
            let qname = r.name()?;
            let qtype = r.u16("question type")?;
            let qclass = r.u16("question class")?;
            if !qname.eq_ignore_ascii_case(wanted) || qtype != TYPE_A || qclass != CLASS_IN {
                return Err(WireError::NotOurs {
                    reason: format!("question is {qname:?} type {qtype} class {qclass}"),
                });
            }
        }
        n => {
            return Err(WireError::NotOurs {
                reason: format!("{n} questions"),
            });
        }
    }
    let mut records = Vec::with_capacity(usize::from(ancount));
    for _ in 0..ancount {
        let owner = r.name()?;
        let rtype = r.u16("record type")?;
        let class = r.u16("record class")?;
        r.take(4, "record TTL")?;
        let rdlength = usize::from(r.u16("record data length")?);
        let rdata_at = r.pos;
        let rdata = r.take(rdlength, "record data")?;
        let data = match (rtype, class) {
            (TYPE_A, CLASS_IN) => match <[u8; 4]>::try_from(rdata) {
                Ok(octets) => Record::A(Ipv4Addr::from(octets)),
                Err(_) => {
                    return Err(WireError::Short {
                        at: rdata_at,
                        what: "A record of 4 bytes",
                    });
                }
            },
            (TYPE_CNAME, CLASS_IN) => {
                let mut sub = Reader { msg, pos: rdata_at };
                Record::Cname(sub.name()?)
            }
            _ => Record::Other,
        };
        records.push((owner, data));
    }
    Ok(Reply {
        id,
        rcode,
        truncated,
        addrs: addresses_of(wanted, &records),
    })
}

enum Record {
    A(Ipv4Addr),
    Cname(String),
    Other,
}

/// The A records owned by `name` or by a name its CNAME chain leads to.
fn addresses_of(name: &str, records: &[(String, Record)]) -> Vec<Ipv4Addr> {
    let mut aliases = vec![name.to_ascii_lowercase()];
    // Each round adds at most one new alias; a chain cannot be longer than the records.
    for _ in 0..records.len() {
        let next = records.iter().find_map(|(owner, data)| match data {
            Record::Cname(target)
                if aliases.contains(&owner.to_ascii_lowercase())
                    && !aliases.contains(&target.to_ascii_lowercase()) =>
            {
                Some(target.to_ascii_lowercase())
            }
            _ => None,
        });
        match next {
            Some(alias) => aliases.push(alias),
            None => break,
        }
    }
    records
        .iter()
        .filter_map(|(owner, data)| match data {
            Record::A(addr) if aliases.contains(&owner.to_ascii_lowercase()) => Some(*addr),
            _ => None,
        })
        .collect()
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let bytes = self
            .msg
            .get(self.pos..self.pos + n)
            .ok_or(WireError::Short { at: self.pos, what })?;
        self.pos += n;
        Ok(bytes)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A possibly compressed name, as dotted text without the trailing dot
    /// (the root is `""`). Leaves the reader after the name's first encoding.
    fn name(&mut self) -> Result<String, WireError> {
        let mut labels: Vec<String> = Vec::new();
        let mut at = self.pos;
        let mut resume = None;
        let mut pointers = 0;
        let mut wire_len = 0;
        loop {
            let bad = |reason| WireError::BadMessageName { at, reason };
            let len = *self.msg.get(at).ok_or(WireError::Short {
                at,
                what: "name label",
            })?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    self.pos = resume.unwrap_or(at + 1);
                    return Ok(labels.join("."));
                }
                0x00 => {
                    let len = usize::from(len);
                    wire_len += len + 1;
                    if wire_len > MAX_NAME_LEN {
                        return Err(bad("longer than 255 bytes"));
                    }
                    let label = self.msg.get(at + 1..at + 1 + len).ok_or(WireError::Short {
                        at,
                        what: "name label",
                    })?;
                    labels.push(String::from_utf8_lossy(label).into_owned());
                    at += 1 + len;
                }
                0xc0 => {
                    let low = *self.msg.get(at + 1).ok_or(WireError::Short {
                        at,
                        what: "compression pointer",
                    })?;
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(bad("compression pointer loop"));
                    }
                    resume.get_or_insert(at + 2);
                    at = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                }
                _ => return Err(bad("reserved label type")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `web.default.svc.cluster.local` as the question of a query with id 0xbeef.
    const QUERY: &[u8] = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
        \x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01";

    fn ok<T>(r: Result<T, WireError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn encodes_a_recursive_a_query() {
        assert_eq!(
            ok(encode_query(0xbeef, "web.default.svc.cluster.local")),
            QUERY
        );
        // The trailing dot makes no difference on the wire.
        assert_eq!(
            ok(encode_query(0xbeef, "web.default.svc.cluster.local.")),
            QUERY
        );
    }

    #[test]
    fn refuses_names_that_do_not_fit() {
        for bad in ["", ".", "a..b", ".a"] {
            assert!(
                matches!(encode_query(1, bad), Err(WireError::BadName { .. })),
                "{bad:?}"
            );
        }
        let long_label = "x".repeat(64);
        assert!(encode_query(1, &long_label).is_err());
        assert!(encode_query(1, &"x".repeat(63)).is_ok());
        // 4 * (63 + 1) + 1 = 257 bytes on the wire.
        let long_name = vec!["y".repeat(63); 4].join(".");
        assert!(encode_query(1, &long_name).is_err());
    }

    /// A reply to QUERY: the question, then `web` CNAME `backend.example`
    /// (compressed pointer to the question), two A records for the alias, one
    /// unrelated A record, and an AAAA record that is skipped.
    fn reply(flags: u16, answers: &[&[u8]]) -> Vec<u8> {
        let mut m = QUERY.to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    // Owner: pointer to the question name at offset 12.
    const CNAME: &[u8] = b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x1e\x00\x11\
        \x07backend\x07example\x00";
    // Owner: pointer to the CNAME's target at offset 12 + 35 + 12 = 59.
    const A1: &[u8] = b"\xc0\x3b\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x00\x00\x01";
    const A2: &[u8] = b"\xc0\x3b\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x00\x00\x02";
    const UNRELATED: &[u8] =
        b"\x05other\x00\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x09\x09\x09";
    const AAAA: &[u8] = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x1e\x00\x10\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01";

    #[test]
    fn decodes_a_records_through_a_compressed_cname() {
        let msg = reply(0x8180, &[CNAME, A1, AAAA, UNRELATED, A2]);
        let r = ok(decode_reply(&msg, "WEB.default.svc.cluster.local."));
        assert_eq!(r.id, 0xbeef);
        assert_eq!(r.rcode, RCODE_NOERROR);
        assert!(!r.truncated);
        assert_eq!(
            r.addrs,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn decodes_direct_a_records_and_round_trips_the_query() {
        let direct: &[u8] = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x7f\x00\x00\x01";
        let msg = reply(0x8580, &[direct]);
        let r = ok(decode_reply(&msg, "web.default.svc.cluster.local"));
        assert_eq!(r.addrs, vec![Ipv4Addr::LOCALHOST]);
        // Our own query is a question, not a reply.
        assert!(matches!(
            decode_reply(QUERY, "web.default.svc.cluster.local"),
            Err(WireError::NotOurs { .. })
        ));
    }

    #[test]
    fn decodes_nxdomain_and_truncation() {
        let nx = ok(decode_reply(
            &reply(0x8183, &[]),
            "web.default.svc.cluster.local",
        ));
        assert_eq!(nx.rcode, RCODE_NXDOMAIN);
        assert!(nx.addrs.is_empty());
        assert_eq!(rcode_name(nx.rcode), "NXDOMAIN");
        let tc = ok(decode_reply(
            &reply(0x8380, &[]),
            "web.default.svc.cluster.local",
        ));
        assert!(tc.truncated);
        // A reply without the question (some servers' errors).
        let bare = b"\xbe\xef\x81\x82\x00\x00\x00\x00\x00\x00\x00\x00";
        assert_eq!(ok(decode_reply(bare, "x")).rcode, 2);
        assert_eq!(rcode_name(2), "SERVFAIL");
    }

    #[test]
    fn rejects_other_questions_and_malformed_messages() {
        let msg = reply(0x8180, &[A1]);
        assert!(matches!(
            decode_reply(&msg, "other.example"),
            Err(WireError::NotOurs { .. })
        ));
        // Cut anywhere: an error, never a panic.
        let full = reply(0x8180, &[CNAME, A1]);
        for cut in 0..full.len() {
            assert!(
                decode_reply(&full[..cut], "web.default.svc.cluster.local").is_err(),
                "cut at {cut}"
            );
        }
        // A pointer to itself.
        // (The first answer starts at byte 47 = 0x2f.)
        let looped = reply(
            0x8180,
            &[b"\xc0\x2f\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"],
        );
        assert!(matches!(
            decode_reply(&looped, "web.default.svc.cluster.local"),
            Err(WireError::BadMessageName { .. })
        ));
        // A record with 3 bytes of data.
        let short_a: &[u8] = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x03\x01\x02\x03";
        assert!(matches!(
            decode_reply(&reply(0x8180, &[short_a]), "web.default.svc.cluster.local"),
            Err(WireError::Short { .. })
        ));
    }
}
