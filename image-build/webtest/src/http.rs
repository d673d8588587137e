//! Just enough HTTP/1.1 for the test workload: `http://` URLs, the server's
//! request parsing and routing, and the client's response parsing (bodies by
//! `Content-Length`, chunked, or up to the end of the connection). Every
//! exchange is one request per connection (`Connection: close`).

/// The largest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest response body the client reads.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// A DNS name or an IPv4 literal, as written.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let bad = |reason: &str| format!("URL {url:?}: {reason}");
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let path = path.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        if authority.starts_with('[') {
            return Err(bad("IPv6 addresses are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("bad port {p:?}")))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The `Host` header's value.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where a complete head (up to and including the blank line) ends, if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

// ---- server side --------------------------------------------------------------

/// A response of the server: status, reason, body (always text/plain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: &'static str,
    pub body: String,
    /// Leave the body out (HEAD), still announcing its length.
    pub head_only: bool,
}

impl Answer {
    fn new(status: u16, reason: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            reason,
            body: body.into(),
            head_only: false,
        }
    }

    pub fn bad_request() -> Answer {
        Answer::new(400, "Bad Request", "bad request\n")
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.body.len(),
            if self.status == 405 {
                "Allow: GET, HEAD\r\n"
            } else {
                ""
            },
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head (`METHOD target HTTP/1.x` and headers).
/// `/terminations` shows the `--term-file` (the records of earlier graceful stops).
pub fn route(head: &[u8], hostname: &str, term_file: Option<&std::path::Path>) -> Answer {
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Answer::bad_request();
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::bad_request();
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::new(505, "HTTP Version Not Supported", "HTTP/1.x only\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::new(405, "Method Not Allowed", "method not allowed\n"),
    };
    let answer = match path {
        "/" => Answer::new(200, "OK", format!("{hostname}\n")),
        "/healthz" => Answer::new(200, "OK", "ok\n"),
        "/terminations" => match term_file {
            Some(f) => Answer::new(200, "OK", std::fs::read_to_string(f).unwrap_or_default()),
            None => Answer::new(404, "Not Found", "no --term-file\n"),
        },
        _ => Answer::new(404, "Not Found", "not found\n"),
    };
    Answer {
        head_only,
        ..answer
    }
}

// ---- client side --------------------------------------------------------------

/// The request the client sends.
pub fn request(url: &Url) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cairn-webtest/{}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// A response received by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

/// Parses what has arrived so far: `Ok(None)` while the response is
/// incomplete; `eof` says the server has closed the connection (which ends a
/// body with neither a length nor chunks).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return if eof {
            Err(format!(
                "connection closed after {} bytes, before the end of the response head",
                buf.len()
            ))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &buf[end..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(format!("body of {len} bytes is larger than {MAX_BODY}"));
        }
        match rest.get(..len) {
            Some(b) => Some(b.to_vec()),
            None if eof => {
                return Err(format!(
                    "connection closed after {} of {len} body bytes",
                    rest.len()
                ));
            }
            None => None,
        }
    } else if eof {
        Some(rest.to_vec())
    } else {
        None
    };
    match body {
        Some(body) => Ok(Some(Response {
            status,
            reason,
            body,
        })),
        None if eof => Err("connection closed in the middle of a chunked body".into()),
        None => {
            if rest.len() > MAX_BODY {
                return Err(format!("body larger than {MAX_BODY} bytes"));
            }
            Ok(None)
        }
    }
}

/// A chunked body, or `None` while its last chunk has not arrived. Trailers
/// are skipped.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "chunk size not UTF-8")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers, then the blank line.
            return Ok(head_end_after_trailers(rest).map(|()| body));
        }
        if body.len() + size > MAX_BODY {
            return Err(format!("chunked body larger than {MAX_BODY} bytes"));
        }
        let Some(chunk) = rest.get(..size + 2) else {
            return Ok(None);
        };
        if &chunk[size..] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&chunk[..size]);
        rest = &rest[size + 2..];
    }
}

fn head_end_after_trailers(rest: &[u8]) -> Option<()> {
    if rest.starts_with(b"\r\n") || head_end(rest).is_some() {
        Some(())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_http_urls() {
        assert_eq!(
            url("http://web"),
            Url {
                host: "web".into(),
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            url("http://10.0.0.1:8080/healthz?x=1#frag"),
            Url {
                host: "10.0.0.1".into(),
                port: 8080,
                path: "/healthz?x=1".into()
            }
        );
        assert_eq!(url("http://web.default.svc.cluster.local.?q").path, "/?q");
        assert_eq!(url("http://web:81/").host_header(), "web:81");
        assert_eq!(url("http://web:80/").host_header(), "web");
        for bad in [
            "https://web/",
            "web/",
            "http://",
            "http://:80/",
            "http://web:x/",
            "http://web:70000/",
            "http://[::1]/",
            "http://u@web/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    fn text(a: &Answer) -> String {
        String::from_utf8_lossy(&a.to_bytes()).into_owned()
    }

    #[test]
    fn routes_requests() {
        let root = route(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "web-0", None);
        assert_eq!((root.status, root.body.as_str()), (200, "web-0\n"));
        assert_eq!(
            text(&root),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 6\r\nConnection: close\r\n\r\nweb-0\n"
        );
        let health = route(b"GET /healthz?probe=1 HTTP/1.0\r\n\r\n", "web-0", None);
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n", "w", None).status, 404);
        let head = route(b"HEAD / HTTP/1.1\r\n\r\n", "web-0", None);
        assert!(text(&head).ends_with("Content-Length: 6\r\nConnection: close\r\n\r\n"));
        let post = route(b"POST / HTTP/1.1\r\n\r\n", "w", None);
        assert_eq!(post.status, 405);
        assert!(text(&post).contains("Allow: GET, HEAD\r\n"));
        assert_eq!(route(b"GET / HTTP/2\r\n\r\n", "w", None).status, 505);
        assert_eq!(route(b"GET /\r\n\r\n", "w", None).status, 400);
        assert_eq!(route(b"\xff\xfe\r\n\r\n", "w", None).status, 400);
    }

    #[test]
    fn builds_the_request() {
        let req = String::from_utf8(request(&url("http://web:8080/a?b"))).unwrap_or_default();
        assert!(
            req.starts_with("GET /a?b HTTP/1.1\r\nHost: web:8080\r\n"),
            "{req}"
        );
        assert!(req.ends_with("Connection: close\r\n\r\n"), "{req}");
    }

    fn parsed(buf: &[u8], eof: bool) -> Option<Response> {
        parse_response(buf, eof).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_responses_by_length_chunks_and_eof() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab\n";
        for cut in 0..full.len() {
            assert_eq!(parsed(&full[..cut], false), None, "cut at {cut}");
        }
        let r = parsed(full, false).unwrap_or_else(|| panic!("incomplete"));
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (200, "OK", &b"ab\n"[..])
        );
        assert!(parse_response(&full[..full.len() - 1], true).is_err());

        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: Chunked\r\n\r\n\
            4;ext=1\r\nnot \r\n6\r\nfound\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for cut in 0..chunked.len() {
            assert_eq!(parsed(&chunked[..cut], false), None, "cut at {cut}");
        }
        let r = parsed(chunked, false).unwrap_or_else(|| panic!("incomplete"));
        assert_eq!((r.status, r.body.as_slice()), (404, &b"not found\n"[..]));

        let until_eof = b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\nbusy";
        assert_eq!(parsed(until_eof, false), None);
        let r = parsed(until_eof, true).unwrap_or_else(|| panic!("incomplete"));
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (503, "Service Unavailable", &b"busy"[..])
        );
    }

    #[test]
    fn refuses_malformed_responses() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", true).is_err());
        assert!(parse_response(&vec![b'a'; MAX_HEAD + 1], false).is_err());
    }
}
