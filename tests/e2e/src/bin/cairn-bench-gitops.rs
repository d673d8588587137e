//! Prints the GitOps reconciler's figures of docs/benchmarks.md: the release
//! `cairn-gitops` against a fresh real etcd + kube-apiserver +
//! kube-controller-manager (cairn-testkube) and real git repositories
//! (cairn-testgit), all on 127.0.0.1. A table, then one JSON line.
//!
//! 1. First apply of 1,004 objects (3 namespaces, a CRD, 180 each of ConfigMap,
//!    Secret, Service, ServiceAccount and Deployment (0 replicas), 100 custom
//!    resources) from a file:// repository, from the process start to its
//!    "applied" log line; against `kubectl apply --server-side` of the same set
//!    under other names (CRD, `kubectl wait` for Established, then the whole
//!    directory), once before and once after cairn, on the same API server.
//! 2. The no-op reconcile of those objects (a pass every 1 s interval): API
//!    requests from /metrics and the compare's time from the "in sync" lines.
//! 3. Drift revert: `kubectl patch` of a managed ConfigMap until it is restored,
//!    both moments seen by one `kubectl get --watch`.
//! 4. The reconciler's VmRSS.
//! 5. Webhook push → applied: a second instance with the same number of objects
//!    from an HTTPS server with a token; per push, a signed POST (curl) until the
//!    changed ConfigMap value shows in the watch.
//!
//! Usage, from the workspace root with the component cache warm:
//!   cargo build --release -p cairn-gitops
//!   cargo run --release -p cairn-e2e --bin cairn-bench-gitops -- \
//!       [--gitops target/release/cairn-gitops] [--pushes 50] [--drifts 10]

#![forbid(unsafe_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use cairn_e2e::percentile;
use cairn_pki::paths::{OS_CA, OS_SERVER};
use cairn_testgit::{HttpsGitServer, TestRepo};
use cairn_testkube::gitops::{self as manifest, Options, Reconciler, default_binary, tail};
use hmac::Mac as _;
use serde_json::json;

const NAMESPACES: usize = 3;
const EACH: usize = 180;
const WIDGETS: usize = 100;
const OBJECTS: usize = NAMESPACES + 1 + 5 * EACH + WIDGETS;
const TOKEN: &str = "bench-token-5d1e";
const SECRET: &str = "bench-webhook-secret-32-chars-ok";
const LONG: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(30);
/// A pause after the controller-manager caught up with a set (see [`settle`]).
const SETTLE: Duration = Duration::from_secs(5);
/// The no-op window: about this many passes at the 1 s interval.
const NOOP_WINDOW: Duration = Duration::from_secs(10);

/// The benchmark's objects under `set` (namespaces `bench-<set>-N`, CRD group
/// `<set>.bench.cairn.dev`), one file per kind; `value` is `config-0`'s value.
fn manifests(set: &str, value: &str) -> Vec<(String, String)> {
    let ns = |i: usize| format!("bench-{set}-{}", i % NAMESPACES);
    let group = format!("{set}.bench.cairn.dev");
    let docs =
        |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("---\n");
    let files = [
        (
            "00-namespaces",
            docs(NAMESPACES, &|i| manifest::namespace(&ns(i))),
        ),
        ("01-crd", manifest::widget_crd(&group)),
        (
            "configmaps",
            docs(EACH, &|i| {
                let v = if i == 0 {
                    value.to_string()
                } else {
                    format!("value-{i}")
                };
                manifest::configmap(&ns(i), &format!("config-{i}"), &v)
            }),
        ),
        (
            "secrets",
            docs(EACH, &|i| {
                manifest::secret(&ns(i), &format!("secret-{i}"), &format!("s{i}"))
            }),
        ),
        (
            "services",
            docs(EACH, &|i| manifest::service(&ns(i), &format!("svc-{i}"))),
        ),
        (
            "serviceaccounts",
            docs(EACH, &|i| {
                manifest::service_account(&ns(i), &format!("sa-{i}"))
            }),
        ),
        (
            "deployments",
            docs(EACH, &|i| {
                manifest::deployment(&ns(i), &format!("web-{i}"), 0, "cairn.local/webtest:v1")
            }),
        ),
        (
            "widgets",
            docs(WIDGETS, &|i| {
                manifest::widget(&group, &ns(i), &format!("widget-{i}"), i)
            }),
        ),
    ];
    files
        .into_iter()
        .map(|(name, text)| (format!("{name}.yaml"), text))
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value of `key=value` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn ms_field(line: &str) -> f64 {
    field(line, "ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The reconciler's log lines whose message is `message`: (unix time, line).
fn events(g: &Reconciler, message: &str) -> Vec<(f64, String)> {
    let head = format!("{message} service=");
    g.log_text()
        .lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            rest.trim_start()
                .split_once(' ')?
                .1
                .starts_with(&head)
                .then_some(())?;
            let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .ok()?;
            Some((t.unix_timestamp_nanos() as f64 / 1e9, l.to_string()))
        })
        .collect()
}

/// Waits for a `message` line at or after `after` (unix time) for `revision`.
fn wait_event(
    g: &mut Reconciler,
    message: &str,
    revision: &str,
    after: f64,
) -> Result<(f64, String)> {
    let deadline = Instant::now() + LONG;
    loop {
        let hit = events(g, message)
            .into_iter()
            .find(|(t, l)| *t >= after && field(l, "revision") == Some(revision));
        if let Some(hit) = hit {
            return Ok(hit);
        }
        ensure!(
            g.running() && Instant::now() < deadline,
            "no {message:?} for {revision}:\n{}",
            tail(&g.log_text(), 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cairn_gitops_api_requests_total` (read, write) from the reconciler's /metrics.
fn requests(port: u16) -> Result<(u64, u64)> {
    let text = curl(&[&format!("https://127.0.0.1:{port}/metrics")])?;
    let get = |verb: &str| {
        let series = format!("cairn_gitops_api_requests_total{{verb=\"{verb}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .with_context(|| format!("no {series}in /metrics"))
    };
    Ok((get("read")?, get("write")?))
}

/// curl over HTTPS, trusting the fixture's OS CA (the listener's certificate).
fn curl(args: &[&str]) -> Result<String> {
    let ca = cairn_testkube::shared().secrets().join(OS_CA.crt);
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(ca)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A GitHub push delivery to the webhook, signed with [`SECRET`].
fn push_hook(port: u16, revision: &str) -> Result<()> {
    let body = format!(r#"{{"ref":"refs/heads/main","after":"{revision}"}}"#);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(body.as_bytes());
    let signature = format!(
        "X-Hub-Signature-256: sha256={}",
        hex::encode(mac.finalize().into_bytes())
    );
    let url = format!("https://127.0.0.1:{port}/hook");
    curl(&[
        "-X",
        "POST",
        "-H",
        &signature,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &url,
    ])
    .map(drop)
}

/// CPU seconds (user + system) the live processes `pids` used so far.
fn cpu_s(pids: &[u32]) -> f64 {
    let ticks = |p: &u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    };
    pids.iter().filter_map(ticks).sum::<f64>() / 100.0 // USER_HZ
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// One `kubectl get --watch` of a ConfigMap's `data.value`: each value it
/// takes, with when it arrived.
struct Watch {
    child: Child,
    values: mpsc::Receiver<(Instant, String)>,
}

impl Watch {
    fn start(ns: &str, name: &str) -> Result<Watch> {
        let mut child = cairn_testkube::shared()
            .kubectl_command()
            .args([
                "get",
                "configmap",
                name,
                "-n",
                ns,
                "--watch",
                "-o",
                r#"jsonpath={.data.value}{"\n"}"#,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("kubectl's stdout")?;
        let (tx, values) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Watch { child, values })
    }

    /// When the value next is `value`.
    fn until(&self, value: &str) -> Result<Instant> {
        let deadline = Instant::now() + SHORT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, v) = self
                .values
                .recv_timeout(left)
                .with_context(|| format!("the ConfigMap never showed {value:?}"))?;
            if v == value {
                return Ok(at);
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl apply --server-side` of set `set` written to `<work>/<set>`: the CRD,
/// `kubectl wait` until it is Established, then the whole directory. Seconds,
/// and the control plane's CPU seconds meanwhile.
fn kubectl_apply(work: &Path, set: &str) -> Result<(f64, f64)> {
    let dir = work.join(set);
    std::fs::create_dir_all(&dir)?;
    for (name, text) in manifests(set, "value-0") {
        std::fs::write(dir.join(name), text)?;
    }
    let fx = cairn_testkube::shared();
    let (crd, all) = (dir.join("01-crd.yaml"), dir.display().to_string());
    let (started, cpu) = (Instant::now(), cpu_s(&fx.pids()));
    fx.kubectl(&["apply", "--server-side", "-f", &crd.display().to_string()])?;
    fx.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        &format!("crd/widgets.{set}.bench.cairn.dev"),
    ])?;
    let out = fx.kubectl(&["apply", "--server-side", "-f", &all, "--recursive"])?;
    let took = (started.elapsed().as_secs_f64(), cpu_s(&fx.pids()) - cpu);
    ensure!(
        out.lines().count() == OBJECTS,
        "kubectl applied {} objects:\n{out}",
        out.lines().count()
    );
    Ok(took)
}

/// Waits until the controller-manager has processed every Deployment of `set`
/// (Available; at its client's 20 requests/s that takes it ~30-40 s), then
/// [`SETTLE`]: the next run starts on a quiet control plane.
fn settle(set: &str) -> Result<()> {
    for i in 0..NAMESPACES {
        let ns = format!("bench-{set}-{i}");
        let wait = [
            "wait",
            "--for=condition=Available",
            "deployment",
            "--all",
            "-n",
            &ns,
            "--timeout=300s",
        ];
        cairn_testkube::shared().kubectl(&wait)?;
    }
    std::thread::sleep(SETTLE);
    Ok(())
}

/// An instance started on `dir` with `config` and the webhook/metrics
/// listener; returns it with its start, "fetched" and "applied" times (unix
/// seconds) for `revision`, and the CPU seconds the control plane and the
/// reconciler used until then.
fn start(
    name: &str,
    dir: &Path,
    config: &str,
    revision: &str,
    binary: &Path,
) -> Result<(Reconciler, [f64; 5])> {
    let fx = cairn_testkube::shared();
    let (cert, key) = (
        fx.secrets().join(OS_SERVER.crt),
        fx.secrets().join(OS_SERVER.key),
    );
    let (started, cpu) = (now(), cpu_s(&fx.pids()));
    let opts = Options {
        tls: Some((&cert, &key)),
        binary: Some(binary),
        ..Default::default()
    };
    let mut g = Reconciler::start(name, dir, config, opts);
    let (applied, line) = wait_event(&mut g, "applied", revision, started)?;
    ensure!(
        field(&line, "written") == Some(OBJECTS.to_string().as_str()),
        "not all objects written: {line}"
    );
    let (cpu, own) = (cpu_s(&fx.pids()) - cpu, cpu_s(&[g.pid()]));
    let fetched = events(&g, "fetched").first().map_or(f64::NAN, |e| e.0);
    Ok((g, [started, fetched, applied, cpu, own]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let binary = arg("--gitops").map_or_else(default_binary, PathBuf::from);
    let pushes: usize = arg("--pushes")
        .map_or(Ok(50), |n| n.parse())
        .context("--pushes")?;
    let drifts: usize = arg("--drifts")
        .map_or(Ok(10), |n| n.parse())
        .context("--drifts")?;
    ensure!(
        binary.is_file(),
        "{} is missing: cargo build --release -p cairn-gitops",
        binary.display()
    );
    let load_before = load();
    let fx = cairn_testkube::shared();
    eprintln!(
        "API server up in {:.1} s; {OBJECTS} objects per set",
        fx.started_in().as_secs_f64()
    );
    let work = tempfile::Builder::new()
        .prefix("cairn-bench-gitops-")
        .tempdir()?;
    fx.kubectl(&["api-resources"])?; // kubectl's discovery cache warm, as a user's is

    // 1. First apply: kubectl, cairn, kubectl.
    let (kubectl_before, kubectl_before_cpu) = kubectl_apply(work.path(), "k1")?;
    eprintln!("kubectl (before cairn): {kubectl_before:.2} s");
    settle("k1")?;
    let dir = work.path().join("a");
    let repo = TestRepo::new(&dir.join("git"), "bench")?;
    for (name, text) in manifests("a", "value-0") {
        repo.write(&name, &text);
    }
    let rev = repo.commit("1,004 objects")?;
    let port = free_port()?;
    let webhook = |port: u16| format!("webhook:\n  port: {port}\n  secret: {SECRET}\n");
    let config = manifest::file_config(&repo.file_url(), &webhook(port));
    let (mut g, [started, fetched, applied, cairn_cpu, cairn_own_cpu]) =
        start("bench", &dir, &config, &rev, &binary)?;
    let (cairn, cairn_pass) = (applied - started, applied - fetched);
    eprintln!("cairn: {cairn:.2} s from the start, {cairn_pass:.2} s from \"fetched\"");
    let healthy = wait_event(&mut g, "healthy", &rev, applied)?.0 - applied;
    let rss_applied = rss_mib(g.pid())?;
    settle("a")?;
    let (kubectl_after, kubectl_after_cpu) = kubectl_apply(work.path(), "k2")?;
    eprintln!("kubectl (after cairn): {kubectl_after:.2} s");
    settle("k2")?;

    // 2. No-op reconciles: from the first "in sync" pass on, over a window.
    wait_event(&mut g, "in sync", &rev, now())?;
    let (t0, (reads0, writes0)) = (now(), requests(port)?);
    std::thread::sleep(NOOP_WINDOW);
    let ((reads1, writes1), t1) = (requests(port)?, now());
    let window = |message| {
        events(&g, message)
            .into_iter()
            .filter(|(t, _)| (t0..=t1).contains(t))
            .collect::<Vec<_>>()
    };
    let mut compare: Vec<f64> = window("in sync").iter().map(|(_, l)| ms_field(l)).collect();
    let reapplied = window("drifted objects re-applied").len();
    ensure!(
        !compare.is_empty(),
        "no \"in sync\" pass in the window:\n{}",
        tail(&g.log_text(), 20)
    );
    let (passes, reads, writes) = (compare.len(), reads1 - reads0, writes1 - writes0);
    let rss_noop = rss_mib(g.pid())?;
    eprintln!("no-op: {passes} passes, {reads} reads, {writes} writes");

    // 3. Drift revert.
    let watch = Watch::start("bench-a-0", "config-0")?;
    watch.until("value-0")?;
    let mut drift = Vec::new();
    for i in 0..drifts {
        let patch = format!(r#"{{"data":{{"value":"edited-{i}"}}}}"#);
        fx.kubectl(&[
            "patch",
            "configmap",
            "config-0",
            "-n",
            "bench-a-0",
            "--type=merge",
            "-p",
            &patch,
        ])?;
        let edited = watch.until(&format!("edited-{i}"))?;
        drift.push(watch.until("value-0")?.duration_since(edited).as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(watch);
    let rss_drift = rss_mib(g.pid())?;
    g.stop();

    // 5. Webhook push → applied, from an HTTPS server.
    let served = work.path().join("served");
    std::fs::create_dir_all(&served)?;
    let server = HttpsGitServer::start(&served, TOKEN)?;
    let repo = TestRepo::new(&served, "hook")?;
    let write = |value: &str| {
        manifests("h", value)
            .into_iter()
            .for_each(|(name, text)| repo.write(&name, &text))
    };
    write("push-0");
    let mut rev = repo.commit("1,004 objects")?;
    let port = free_port()?;
    let ca: String = server
        .ca_pem()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let config = format!(
        "url: {}\nauth:\n  token: {TOKEN}\nca: |\n{ca}intervalSeconds: 3600\n{}",
        server.url("hook.git"),
        webhook(port)
    );
    let (mut h, [started, fetched, applied, ..]) =
        start("bench-hook", &work.path().join("h"), &config, &rev, &binary)?;
    let (https_first, https_pass) = (applied - started, applied - fetched);
    wait_event(&mut h, "healthy", &rev, applied)?;
    let watch = Watch::start("bench-h-0", "config-0")?;
    watch.until("push-0")?;
    let mut curl_ms: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            curl(&[&format!("https://127.0.0.1:{port}/healthz")])
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    let mut hook = Vec::new();
    for i in 1..=pushes {
        let value = format!("push-{i}");
        write(&value);
        rev = repo.commit(&value)?;
        let t = Instant::now();
        push_hook(port, &rev)?;
        hook.push(watch.until(&value)?.duration_since(t).as_secs_f64() * 1e3);
        wait_event(&mut h, "healthy", &rev, 0.0)?; // the pass is over
    }
    let rss_hook = rss_mib(h.pid())?;
    drop((watch, h, server));
    let load_after = load();

    let p = |v: &mut Vec<f64>, q| percentile(v, q);
    let (drift_p50, drift_max) = (p(&mut drift, 0.5), p(&mut drift, 1.0));
    let (hook_p50, hook_p99, hook_max) = (p(&mut hook, 0.5), p(&mut hook, 0.99), p(&mut hook, 1.0));
    let (compare_p50, compare_max) = (p(&mut compare, 0.5), p(&mut compare, 1.0));
    let rss_max = rss_applied.max(rss_noop).max(rss_drift).max(rss_hook);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ratio = |k: f64| k / cairn;
    let rows = [
        (
            format!("first apply, {OBJECTS} objects: cairn, process start → applied"),
            format!("{cairn:.2} s"),
            String::new(),
        ),
        (
            "  of which \"fetched\" → \"applied\"".into(),
            format!("{cairn_pass:.2} s"),
            String::new(),
        ),
        (
            "  kubectl apply --server-side, before cairn".into(),
            format!("{kubectl_before:.2} s ({:.2}×)", ratio(kubectl_before)),
            verdict(ratio(kubectl_before) >= 3.0).into(),
        ),
        (
            "  kubectl apply --server-side, after cairn".into(),
            format!("{kubectl_after:.2} s ({:.2}×)", ratio(kubectl_after)),
            verdict(ratio(kubectl_after) >= 3.0).into(),
        ),
        (
            "  cairn \"applied\" → \"healthy\" (the controller-manager's pace)".into(),
            format!("{healthy:.1} s"),
            String::new(),
        ),
        (
            "  control-plane CPU s: kubectl before / cairn / kubectl after".into(),
            format!(
                "{kubectl_before_cpu:.1} / {cairn_cpu:.1} / {kubectl_after_cpu:.1} (cairn's own {cairn_own_cpu:.1})"
            ),
            String::new(),
        ),
        (
            "  cairn over HTTPS (the webhook instance), start / fetched → applied".into(),
            format!("{https_first:.2} s / {https_pass:.2} s"),
            String::new(),
        ),
        (
            format!("no-op reconcile: requests over {passes} passes (read / write)"),
            format!("{reads} / {writes}"),
            verdict(writes == 0 && reapplied == 0).into(),
        ),
        (
            "  compare time p50 / max".into(),
            format!("{compare_p50:.0} ms / {compare_max:.0} ms"),
            verdict(compare_max < 1000.0).into(),
        ),
        (
            format!("drift revert p50 / max ({drifts})"),
            format!("{drift_p50:.0} ms / {drift_max:.0} ms"),
            verdict(drift_max < 2000.0).into(),
        ),
        (
            "VmRSS: applied / no-op / drift / webhook instance".into(),
            format!("{rss_applied:.1} / {rss_noop:.1} / {rss_drift:.1} / {rss_hook:.1} MiB"),
            verdict(rss_max < 64.0).into(),
        ),
        (
            format!("webhook push → applied p50 / p99 / max ({pushes})"),
            format!("{hook_p50:.0} ms / {hook_p99:.0} ms / {hook_max:.0} ms"),
            verdict(hook_p50 < 1000.0 && hook_p99 < 2000.0).into(),
        ),
        (
            "  curl GET /healthz (in the figure above) p50".into(),
            format!("{:.0} ms", p(&mut curl_ms, 0.5)),
            String::new(),
        ),
    ];
    println!("| figure | value | target |\n|---|---|---|");
    for (what, value, target) in rows {
        println!("| {what} | {value} | {target} |");
    }
    println!("load average before / after: {load_before} / {load_after}");
    let figures = json!({
        "objects": OBJECTS,
        "first_apply_s": {"cairn": cairn, "cairn_fetched_to_applied": cairn_pass, "kubectl_before": kubectl_before, "kubectl_after": kubectl_after, "control_plane_cpu_s": [kubectl_before_cpu, cairn_cpu, kubectl_after_cpu], "cairn_cpu_s": cairn_own_cpu, "cairn_applied_to_healthy": healthy, "cairn_https": https_first, "cairn_https_fetched_to_applied": https_pass},
        "noop": {"passes": passes, "reads": reads, "writes": writes, "reapplied": reapplied, "compare_ms_p50": compare_p50, "compare_ms_max": compare_max},
        "drift_ms": {"p50": drift_p50, "max": drift_max, "n": drifts},
        "rss_mib": {"applied": rss_applied, "noop": rss_noop, "drift": rss_drift, "webhook_instance": rss_hook},
        "webhook_ms": {"p50": hook_p50, "p99": hook_p99, "max": hook_max, "n": pushes},
        "load": [load_before, load_after],
    });
    println!("{figures}");
    Ok(())
}
