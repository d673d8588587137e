//! The GitOps reconciler on the real image under QEMU (TCG): the node's machine
//! config has a `gitops` section pointing at a git server on the host
//! (`cairn_testgit::HttpsGitServer`, reached by the guest through a `guestfwd`
//! relay at 10.0.2.100), and the cluster follows the repository:
//!
//! 1. the first commit (Namespace `demo`, Deployment `web`, 1 replica) is applied
//!    at boot and the Deployment becomes available;
//! 2. a push (2 replicas) announced by a GitHub-signed webhook to the node's
//!    forwarded port 9443 is applied at once (the figure is printed);
//! 3. a broken push (an image that does not exist) fails its health check and is
//!    rolled back to the previous commit;
//! 4. after `cairnctl reboot` the reconciler resumes without writing anything.
//!
//! One VM carries the whole scenario: a boot to a Ready node costs minutes.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_e2e::gitops::{
    WEBHOOK_PORT, WEBTEST_IMAGE, manifests, post_webhook, with_gitops, write_os_ca,
};
use cairn_e2e::{
    CLUSTER_TIMEOUT, Cairnctl, Kubectl, NODE_NAME, fresh_disk, node_config_with, node_files,
    vm_slot,
};
use cairn_qemu::{GUEST_FORWARD_ADDR, GuestForward, Vm};
use cairn_testgit::{HttpsGitServer, TestRepo};
use serde_json::Value;

const TOKEN: &str = "e2e-git-token";
const WEBHOOK_SECRET: &str = "e2e-webhook-secret-0123456789abc";
const GOOD_IMAGE: &str = WEBTEST_IMAGE;
const BROKEN_IMAGE: &str = "cairn.local/does-not-exist:v1";

/// The test node's machine config with a `gitops` section.
fn machine_config(dir: &Path, server: &HttpsGitServer) -> std::path::PathBuf {
    let section = serde_json::json!({
        "url": format!("https://{GUEST_FORWARD_ADDR}:{}/demo.git", server.port()),
        "auth": {"token": TOKEN},
        "ca": server.ca_pem(),
        "intervalSeconds": 5,
        "webhook": {"secret": WEBHOOK_SECRET},
        "health": {"timeoutSeconds": 60},
    });
    with_gitops(
        &node_files().machine_config,
        section,
        &dir.join("machine.yaml"),
    )
    .expect("machine config")
}

/// `kubectl get gitops cairn`'s status (Null until it has one).
fn sync_status(k: &Kubectl) -> Value {
    k.run(&["get", "gitops", "cairn", "-o", "json"])
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v["status"].clone())
        .unwrap_or(Value::Null)
}

/// The Deployment `demo/web` (Null while it does not exist).
fn deployment(k: &Kubectl) -> Value {
    k.run(&["get", "deploy", "-n", "demo", "web", "-o", "json"])
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null)
}

/// Polls every half second until `done(status, deployment)`; panics with both,
/// the reconciler's log and the console tail otherwise.
fn wait_for(
    k: &Kubectl,
    ctl: &Cairnctl,
    vm: &Vm,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value, &Value) -> bool,
) -> (Value, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (s, d) = (sync_status(k), deployment(k));
        if done(&s, &d) {
            return (s, d);
        }
        if Instant::now() > deadline {
            let log = ctl
                .run(&["logs", "gitops", "--tail", "60"])
                .unwrap_or_default();
            panic!(
                "{what}: not within {timeout:?}\nstatus: {s:#}\ndeployment status: {:#}\n--- gitops log ---\n{log}\n--- console ---\n{}",
                d["status"],
                vm.console_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn post(host_port: u16, ca: &Path) -> String {
    post_webhook(host_port, ca, WEBHOOK_SECRET).expect("posting the webhook")
}

fn history_has(s: &Value, revision: &str, result: &str) -> bool {
    s["history"].as_array().is_some_and(|h| {
        h.iter()
            .any(|e| e["revision"] == revision && e["result"] == result)
    })
}

fn image(d: &Value) -> &str {
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn the_node_follows_its_git_repository() {
    let Some(_one) = vm_slot() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    std::fs::create_dir_all(&root).expect("git root");
    let repo = TestRepo::new(&root, "demo").expect("repository");
    repo.write("app.yaml", &manifests(1, GOOD_IMAGE));
    let first = repo.commit("web, one replica").expect("commit");
    let server = HttpsGitServer::start(&root, TOKEN).expect("git server");

    let mut cfg = node_config_with(Some(&machine_config(dir.path(), &server)), true);
    cfg.forwards.push(WEBHOOK_PORT);
    cfg.guest_forwards.push(GuestForward {
        port: server.port(),
        relay: env!("CARGO_BIN_EXE_cairn-guest-relay").into(),
    });
    let disk = fresh_disk();
    let vm = Vm::boot(&cfg, &disk).expect("boot");

    // 1. The first commit is applied at boot and the Deployment becomes available.
    let ready = vm
        .wait_for_event("ready", &[("service", "gitops")], CLUSTER_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "gitops ready: {e}\n--- console ---\n{}",
                vm.console_tail(80)
            )
        });
    eprintln!(
        "gitops ready {:.1}s after QEMU start",
        vm.since_start(&ready).as_secs_f64()
    );
    let ctl = Cairnctl::new(&vm);
    let k = Kubectl::new(&vm).expect("kubectl");
    wait_for(
        &k,
        &ctl,
        &vm,
        "the first commit applied and web available",
        CLUSTER_TIMEOUT,
        |s, d| s["appliedRevision"] == first.as_str() && d["status"]["availableReplicas"] == 1,
    );
    eprintln!(
        "first commit applied, web available {:.1}s after QEMU start",
        vm.started_at().elapsed().as_secs_f64()
    );

    // 2. Push 2 replicas and announce it with a signed webhook.
    let ca = dir.path().join("os-ca.crt");
    write_os_ca(&node_files().secrets, &ca).expect("the machine-API CA");
    repo.write("app.yaml", &manifests(2, GOOD_IMAGE));
    let second = repo.commit("web, two replicas").expect("commit");
    let pushed = Instant::now();
    let code = post(vm.host_port(WEBHOOK_PORT), &ca);
    assert_eq!(code, "202", "the signed webhook is accepted");
    wait_for(
        &k,
        &ctl,
        &vm,
        "2 replicas applied",
        Duration::from_secs(60),
        |_, d| d["spec"]["replicas"] == 2,
    );
    let applied_in = pushed.elapsed();
    eprintln!(
        "push -> applied through the webhook: {:.2}s",
        applied_in.as_secs_f64()
    );
    let log = ctl.run(&["logs", "gitops"]).expect("cairnctl logs gitops");
    assert!(
        log.contains("webhook verified"),
        "the webhook was received:\n{log}"
    );
    assert!(
        applied_in < Duration::from_secs(15),
        "push -> applied took {applied_in:?}"
    );
    wait_for(
        &k,
        &ctl,
        &vm,
        "the second commit healthy",
        Duration::from_secs(180),
        |s, _| s["lastHealthyRevision"] == second.as_str(),
    );

    // 3. A broken image: unhealthy within the 60 s health timeout, rolled back.
    repo.write("app.yaml", &manifests(2, BROKEN_IMAGE));
    let broken = repo.commit("web, broken image").expect("commit");
    let t = Instant::now();
    assert_eq!(post(vm.host_port(WEBHOOK_PORT), &ca), "202");
    let (s, d) = wait_for(
        &k,
        &ctl,
        &vm,
        "the broken commit rolled back",
        Duration::from_secs(240),
        |s, d| {
            history_has(s, &broken, "failed")
                && s["appliedRevision"] == second.as_str()
                && image(d) == GOOD_IMAGE
        },
    );
    eprintln!(
        "broken commit failed and rolled back in {:.1}s (health timeout 60 s)",
        t.elapsed().as_secs_f64()
    );
    assert!(history_has(&s, &second, "rolled-back-to"), "{s:#}");
    let history: Vec<String> = s["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {}",
                &e["revision"].as_str().unwrap_or_default()[..7],
                e["result"]
            )
        })
        .collect();
    eprintln!("status history (newest first): {}", history.join(", "));
    assert_eq!(d["spec"]["replicas"], 2);
    // Settle: the rollback's own rollout finishes before the reboot.
    let (_, d) = wait_for(
        &k,
        &ctl,
        &vm,
        "web available again",
        Duration::from_secs(180),
        |s, d| s["health"] == "Healthy" && d["status"]["availableReplicas"] == 2,
    );

    // 4. Reboot: the reconciler resumes from the applied revision, writing nothing.
    let before = (
        d["metadata"]["resourceVersion"].clone(),
        d["metadata"]["generation"].clone(),
    );
    vm.skip_to_end();
    ctl.run(&["reboot"]).expect("cairnctl reboot");
    vm.wait_for_event("shutdown_done", &[], Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("shutdown: {e}\n--- console ---\n{}", vm.console_tail(60)));
    vm.wait_for_event("ready", &[("service", "gitops")], CLUSTER_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "gitops after reboot: {e}\n--- console ---\n{}",
                vm.console_tail(80)
            )
        });
    let deadline = Instant::now() + Duration::from_secs(180);
    let resumed = loop {
        let log = ctl.run(&["logs", "gitops"]).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("resumed")) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no `resumed` line after the reboot:\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("after reboot: {resumed}");
    assert!(resumed.contains("written=0"), "{resumed}");
    assert!(
        resumed.contains(&second),
        "resumed from the applied revision: {resumed}"
    );
    let (s, d) = wait_for(
        &k,
        &ctl,
        &vm,
        "web available after the reboot",
        CLUSTER_TIMEOUT,
        |_, d| d["status"]["availableReplicas"] == 2,
    );
    assert_eq!(s["appliedRevision"], second.as_str(), "{s:#}");
    let after = (
        d["metadata"]["resourceVersion"].clone(),
        d["metadata"]["generation"].clone(),
    );
    eprintln!(
        "web across the reboot: resourceVersion {} -> {}, generation {} -> {}",
        before.0, after.0, before.1, after.1
    );
    // The deployment controller rewrites the status (replicas unavailable while
    // the node restarts, then available), which bumps resourceVersion; the spec's
    // generation moves only when someone writes the spec.
    assert_eq!(
        before.1, after.1,
        "nobody wrote web's spec across the reboot"
    );
    eprintln!(
        "node {NODE_NAME}: test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
