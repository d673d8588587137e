//! What the GitOps end-to-end test and the demo share: the demo application, a
//! machine config with a `gitops` section, and the signed webhook a git server
//! sends on a push.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use cairn_machine_config::MachineConfig;
use hmac::Mac as _;

/// The reconciler's webhook/metrics port on the node.
pub const WEBHOOK_PORT: u16 = 9443;
/// The demo application's image (imported into the node's image store).
pub const WEBTEST_IMAGE: &str = "cairn.local/webtest:v1";

/// The demo repository's one file: Namespace `demo` and Deployment `web` of
/// cairn's test web server (imported into the image, hence `imagePullPolicy: Never`).
pub fn manifests(replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: demo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: {image}
        imagePullPolicy: Never
        args: [serve, --port, "8080"]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 2}}
"#
    )
}

/// `machine_config` with `section` as its `gitops` section, written to `out`.
pub fn with_gitops(
    machine_config: &Path,
    section: serde_json::Value,
    out: &Path,
) -> Result<PathBuf> {
    let base = std::fs::read_to_string(machine_config)
        .with_context(|| format!("reading {}", machine_config.display()))?;
    let mut cfg = MachineConfig::parse(&machine_config.display().to_string(), &base)?;
    cfg.gitops = Some(serde_json::from_value(section).context("the gitops section")?);
    std::fs::write(out, cfg.to_yaml()).with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_path_buf())
}

/// Writes the machine-API CA of a secrets bundle document (which issued the
/// node's webhook certificate) to `out`.
pub fn write_os_ca(secrets: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(secrets)
        .with_context(|| format!("reading {}", secrets.display()))?;
    let bundle = cairn_pki::Bundle::from_document(&text)?;
    let ca = bundle
        .get(cairn_pki::paths::OS_CA.crt)
        .context("the bundle has no machine-API CA")?;
    std::fs::write(out, ca.bytes()).with_context(|| format!("writing {}", out.display()))
}

/// POSTs a GitHub push event signed with `secret` to the node's webhook,
/// forwarded to 127.0.0.1:`host_port` (verified against `ca`); the HTTP status.
pub fn post_webhook(host_port: u16, ca: &Path, secret: &str) -> Result<String> {
    let body = r#"{"ref":"refs/heads/main"}"#;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).context("HMAC key")?;
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", "X-GitHub-Event: push"])
        .args(["-H", &format!("X-Hub-Signature-256: {signature}")])
        .args(["--data", body])
        .arg(format!("https://127.0.0.1:{host_port}/hook"))
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
