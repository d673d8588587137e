//! The HTTPS receiver that starts a fetch at once, with the metrics beside it.
//!
//! `POST /hook` (or any path under `/hook/`) with a valid GitHub, Gitea/Gogs or
//! GitLab signature wakes the reconcile loop; nothing else does. `GET /metrics`
//! serves [`Metrics::render`], `GET /healthz` answers `ok`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// The largest webhook body read; GitHub caps its payloads at 25 MiB, but a
/// push event for a configuration repository is far smaller.
pub const MAX_BODY: usize = 1024 * 1024;
/// A client that has not finished its TLS handshake (or sent its request
/// headers, or its body) by then is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// After the shutdown signal, open connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// What a Prometheus scraper expects.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type HmacSha256 = Hmac<Sha256>;

/// Where the receiver listens and what it trusts.
#[derive(Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// The shared secret the git host signs with (never logged).
    pub secret: Vec<u8>,
    pub tls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("listen", &self.listen)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The git host a verified call came from, by the header it signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    Gitea,
    GitLab,
}

impl Provider {
    /// Lower-case name for logs and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a webhook call was refused; the `Display` text is what the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// None of the signature headers is present.
    #[error("unsigned")]
    Unsigned,
    /// The provider's header is present but does not match (or is malformed).
    #[error("bad signature")]
    BadSignature { provider: Provider },
    /// An empty secret would make every signature forgeable; all calls are refused.
    #[error("no webhook secret configured")]
    NoSecret,
}

/// Verifies a call's signature against `secret`: GitHub's
/// `X-Hub-Signature-256: sha256=<hex>`, Gitea's `X-Gitea-Signature: <hex>` (or
/// Gogs' `X-Gogs-Signature`), both HMAC-SHA256 of the body; GitLab's
/// `X-Gitlab-Token: <secret>`. All comparisons are constant-time. Gitea also
/// sends GitHub's header, so its own is checked first.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Provider, WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecret);
    }
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).unwrap_or(""))
    };
    let hmac_matches = |hex_signature: &str| {
        let Ok(signature) = hex::decode(hex_signature) else {
            return false;
        };
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&signature).is_ok()
    };
    let (provider, ok) =
        if let Some(sig) = header("x-gitea-signature").or_else(|| header("x-gogs-signature")) {
            (Provider::Gitea, hmac_matches(sig))
        } else if let Some(sig) = header("x-hub-signature-256") {
            (
                Provider::GitHub,
                sig.strip_prefix("sha256=").is_some_and(hmac_matches),
            )
        } else if let Some(value) = headers.get("x-gitlab-token") {
            (Provider::GitLab, token_matches(value.as_bytes(), secret))
        } else {
            return Err(WebhookError::Unsigned);
        };
    if ok {
        Ok(provider)
    } else {
        Err(WebhookError::BadSignature { provider })
    }
}

/// Constant-time equality of a token and the secret, lengths included: both
/// are MACed under a fixed key and the tags compared with `verify_slice`.
fn token_matches(token: &[u8], secret: &[u8]) -> bool {
    let tag = |data: &[u8]| {
        HmacSha256::new_from_slice(b"cairn-gitops webhook token").map(|mut mac| {
            mac.update(data);
            mac
        })
    };
    match (tag(token), tag(secret)) {
        (Ok(token), Ok(secret)) => token.verify_slice(&secret.finalize().into_bytes()).is_ok(),
        _ => false,
    }
}

/// What every request handler needs.
struct Shared {
    secret: Arc<Vec<u8>>,
    trigger: Arc<Notify>,
    metrics: Arc<Metrics>,
}

/// Serves the receiver on `listener` until `shutdown` resolves; connections
/// still open then get a few seconds to finish. Accept errors are logged and
/// retried, so this returns `Ok` on shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    secret: Arc<Vec<u8>>,
    trigger: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let shared = Arc::new(Shared {
        secret,
        trigger,
        metrics,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tracing::info!(service = "gitops", addr = ?listener.local_addr().ok(), "webhook receiver listening");
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(service = "gitops", %error, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, shared, mut stop) = (acceptor.clone(), shared.clone(), stop_rx.clone());
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(service = "gitops", %remote, %error, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(service = "gitops", %remote, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| handle(request, remote, shared.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(service = "gitops", %remote, %error, "webhook connection ended with an error");
            }
        });
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::info!(
            service = "gitops",
            open = connections.len(),
            "webhook connections cut at shutdown"
        );
        connections.shutdown().await;
    }
    tracing::info!(service = "gitops", "webhook receiver stopped");
    Ok(())
}

/// Routes one request.
async fn handle(
    request: Request<Incoming>,
    remote: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let is_hook = path == "/hook" || path.starts_with("/hook/");
    let known = is_hook || path == "/metrics" || path == "/healthz";
    let response = match (request.method(), path) {
        (&Method::POST, _) if is_hook => hook(request, remote, &shared).await,
        (&Method::GET, "/metrics") => {
            let mut response = reply(StatusCode::OK, shared.metrics.render());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "ok"),
        _ if known => {
            let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            let allow = if is_hook { "POST" } else { "GET" };
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// A webhook call: read the body (bounded), verify, and wake the loop.
async fn hook(
    request: Request<Incoming>,
    remote: SocketAddr,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        shared.metrics.webhook(false);
        tracing::warn!(service = "gitops", %remote, "webhook refused: body over {MAX_BODY} bytes");
        json(StatusCode::PAYLOAD_TOO_LARGE, "error", "body too large")
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match tokio::time::timeout(CLIENT_TIMEOUT, Limited::new(body, MAX_BODY).collect())
        .await
    {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(error)) => {
            shared.metrics.webhook(false);
            tracing::warn!(service = "gitops", %remote, %error, "webhook refused: reading the body failed");
            return json(StatusCode::BAD_REQUEST, "error", "unreadable body");
        }
        Err(_) => {
            shared.metrics.webhook(false);
            tracing::warn!(service = "gitops", %remote, "webhook refused: the body took too long");
            return json(StatusCode::REQUEST_TIMEOUT, "error", "body too slow");
        }
    };
    match verify(&parts.headers, &body, &shared.secret) {
        Ok(provider) => {
            shared.metrics.webhook(true);
            shared.trigger.notify_one();
            tracing::info!(service = "gitops", %remote, %provider, "webhook verified; fetching now");
            json(StatusCode::ACCEPTED, "status", "fetch started")
        }
        Err(reason) => {
            shared.metrics.webhook(false);
            let provider = match &reason {
                WebhookError::BadSignature { provider } => provider.as_str(),
                _ => "none",
            };
            tracing::warn!(service = "gitops", %remote, provider, %reason, "webhook refused");
            json(StatusCode::UNAUTHORIZED, "error", &reason.to_string())
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// `{"<key>":"<message>"}` with the JSON content type.
fn json(status: StatusCode, key: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ key: message }).to_string();
    let mut response = reply(status, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (workspace lint `unwrap_used`)
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    hyper::header::HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn github_example_from_its_documentation() {
        // GitHub's documented test vector for this secret and body.
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify(&headers(&[("x-hub-signature-256", sig)]), BODY, SECRET),
            Ok(Provider::GitHub)
        );
    }

    #[test]
    fn each_provider_verifies() {
        let hex = sign(SECRET, BODY);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={hex}"))]);
        assert_eq!(verify(&github, BODY, SECRET), Ok(Provider::GitHub));
        assert_eq!(
            verify(&headers(&[("x-gitea-signature", &hex)]), BODY, SECRET),
            Ok(Provider::Gitea)
        );
        assert_eq!(
            verify(
                &headers(&[("x-gogs-signature", &hex.to_uppercase())]),
                BODY,
                SECRET
            ),
            Ok(Provider::Gitea)
        );
        let gitea_both = headers(&[
            ("x-gitea-signature", &hex),
            ("x-hub-signature-256", &format!("sha256={hex}")),
        ]);
        assert_eq!(verify(&gitea_both, BODY, SECRET), Ok(Provider::Gitea));
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert_eq!(
            verify(&headers(&[("x-gitlab-token", secret)]), BODY, SECRET),
            Ok(Provider::GitLab)
        );
    }

    #[test]
    fn wrong_secret_or_tampered_body_is_refused() {
        let bad = |provider| Err(WebhookError::BadSignature { provider });
        let hex = sign(b"another secret", BODY);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={hex}"))]);
        assert_eq!(verify(&github, BODY, SECRET), bad(Provider::GitHub));
        assert_eq!(
            verify(&headers(&[("x-gitea-signature", &hex)]), BODY, SECRET),
            bad(Provider::Gitea)
        );
        let hex = sign(SECRET, BODY);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={hex}"))]);
        assert_eq!(
            verify(&github, b"Hello, World?", SECRET),
            bad(Provider::GitHub)
        );
        assert_eq!(
            verify(&headers(&[("x-gitea-signature", &hex)]), b"", SECRET),
            bad(Provider::Gitea)
        );
        for token in [
            "It's a Secret to Everybod",
            "It's a Secret to Everybody!",
            "",
        ] {
            assert_eq!(
                verify(&headers(&[("x-gitlab-token", token)]), BODY, SECRET),
                bad(Provider::GitLab)
            );
        }
    }

    #[test]
    fn missing_or_malformed_headers_are_refused() {
        assert_eq!(
            verify(&HeaderMap::new(), BODY, SECRET),
            Err(WebhookError::Unsigned)
        );
        assert_eq!(
            verify(&headers(&[("x-hub-signature", "sha1=00")]), BODY, SECRET),
            Err(WebhookError::Unsigned)
        );
        assert_eq!(WebhookError::Unsigned.to_string(), "unsigned");
        let bad = |provider| Err(WebhookError::BadSignature { provider });
        let hex = sign(SECRET, BODY);
        for sig in [
            hex.clone(),
            format!("sha1={hex}"),
            "sha256=zz".into(),
            "sha256=".into(),
            format!("sha256={}", &hex[1..]),
            format!("sha256={}", &hex[..62]),
        ] {
            assert_eq!(
                verify(&headers(&[("x-hub-signature-256", &sig)]), BODY, SECRET),
                bad(Provider::GitHub),
                "{sig}"
            );
        }
        assert_eq!(
            verify(&headers(&[("x-gitea-signature", "not hex")]), BODY, SECRET),
            bad(Provider::Gitea)
        );
        assert_eq!(
            bad(Provider::Gitea).unwrap_err().to_string(),
            "bad signature"
        );
    }

    #[test]
    fn empty_secret_refuses_everything() {
        let hex = sign(b"", BODY);
        let github = headers(&[("x-hub-signature-256", &format!("sha256={hex}"))]);
        assert_eq!(verify(&github, BODY, b""), Err(WebhookError::NoSecret));
        assert_eq!(
            verify(&headers(&[("x-gitlab-token", "")]), BODY, b""),
            Err(WebhookError::NoSecret)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any header values and body: an error or a provider, never a panic; and
        /// without the secret's signature, never accepted.
        #[test]
        fn forged_calls_are_refused(
            github in proptest::option::of(proptest::prelude::any::<String>()),
            gitea in proptest::option::of(proptest::prelude::any::<String>()),
            gitlab in proptest::option::of(proptest::prelude::any::<String>()),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut h = HeaderMap::new();
            for (name, value) in [("x-hub-signature-256", github), ("x-gitea-signature", gitea), ("x-gitlab-token", gitlab)] {
                if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    h.insert(name, v);
                }
            }
            proptest::prop_assert!(verify(&h, &body, SECRET).is_err());
        }

        /// A correct signature is accepted; the same signature over a body with
        /// one byte changed is refused.
        #[test]
        fn one_changed_byte_is_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..256),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            x in 1u8..=255,
        ) {
            let signed = headers(&[("x-hub-signature-256", &format!("sha256={}", sign(SECRET, &body)))]);
            proptest::prop_assert!(verify(&signed, &body, SECRET).is_ok());
            let mut changed = body.clone();
            changed[at.index(body.len())] ^= x;
            proptest::prop_assert!(verify(&signed, &changed, SECRET).is_err());
        }
    }
}
