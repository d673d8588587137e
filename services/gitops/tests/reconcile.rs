//! The reconciler against a REAL etcd + kube-apiserver + kube-controller-manager
//! (tests/kube) and real git repositories: ordering, prune, protected kinds, the
//! mass-deletion guard, drift, immutable fields, every bad-input case, health
//! and rollback, resuming after a restart. Each test is its own instance (its own
//! status object and inventory) with its own namespaces, so they run in parallel
//! on one API server.

mod common;

use std::time::Duration;

use cairn_testgit::TestRepo;
use common::*;

const T: Duration = Duration::from_secs(60);

fn repo(dir: &std::path::Path) -> TestRepo {
    TestRepo::new(&dir.join("git"), "r").expect("repo")
}

#[test]
fn crd_and_its_custom_resources_in_one_commit_converge_in_one_reconcile() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    // The custom resource sorts before its definition and its namespace.
    r.write("a-widget.yaml", &widget("test.cairn.dev", "order", "w1", 3));
    r.write("b-cm.yaml", &configmap("order", "settings", "1"));
    r.write(
        "c-deploy.yaml",
        &deployment("order", "web", 0, "cairn.local/webtest:v1"),
    );
    r.write("z-crd.yaml", &widget_crd("test.cairn.dev"));
    r.write("z-ns.yaml", &namespace("order"));
    let rev = r.commit("crd and cr").expect("commit");
    let mut g = Reconciler::start(
        "order",
        dir.path(),
        &file_config(&r.file_url(), ""),
        Options::default(),
    );
    let s = g.wait_applied(&rev, T);
    // One reconcile: one "applied" entry, nothing refused or failed before it.
    let history = s["history"].as_array().expect("history");
    let results: Vec<&str> = history
        .iter()
        .filter_map(|e| e["result"].as_str())
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == "applied").count(),
        1,
        "{s}"
    );
    assert!(
        !results.iter().any(|r| *r == "failed" || *r == "refused"),
        "{s}"
    );
    let w =
        get(&["widgets.test.cairn.dev", "-n", "order", "w1"]).expect("the custom resource exists");
    assert_eq!(w["spec"]["size"], 3);
    assert_eq!(w["metadata"]["labels"]["gitops.cairn.dev/managed"], "cairn");
    g.wait_status("healthy", T, |s| s["health"] == "Healthy");
    // kubectl shows the status object with its columns.
    let table = fixture()
        .kubectl(&["get", "gitops", "order"])
        .expect("kubectl get gitops");
    assert!(table.contains("APPLIED") && table.contains(&rev), "{table}");
    // Applied events are recorded.
    let events = fixture()
        .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "json"])
        .expect("events");
    assert!(
        events.contains("\"reason\": \"Applied\""),
        "no Applied event"
    );
}

#[test]
fn prune_deletes_removed_objects_but_never_protected_kinds_and_refuses_mass_deletion() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    r.write(
        "ns.yaml",
        &format!("{}---\n{}", namespace("prune"), namespace("prune-extra")),
    );
    for i in 0..4 {
        r.write(
            &format!("cm{i}.yaml"),
            &configmap("prune", &format!("cm{i}"), "x"),
        );
    }
    let first = r.commit("six objects").expect("commit");
    let mut g = Reconciler::start(
        "prune",
        dir.path(),
        &file_config(&r.file_url(), ""),
        Options::default(),
    );
    g.wait_applied(&first, T);

    // Remove one ConfigMap and one Namespace (2 of 6): the ConfigMap goes, the
    // Namespace is protected and stays.
    r.remove("cm0.yaml");
    r.write("ns.yaml", &namespace("prune"));
    let second = r.commit("remove two").expect("commit");
    g.wait_applied(&second, T);
    eventually("cm0 deleted", T, || {
        get(&["cm", "-n", "prune", "cm0"]).is_none().then_some(())
    });
    let ns = get(&["ns", "prune-extra"]).expect("the protected namespace is still there");
    assert!(ns["metadata"]["deletionTimestamp"].is_null());
    assert!(get(&["cm", "-n", "prune", "cm1"]).is_some());

    // An "empty" commit would delete everything: refused, nothing deleted.
    for i in 1..4 {
        r.remove(&format!("cm{i}.yaml"));
    }
    let wipe = r.commit("oops").expect("commit");
    let s = g.wait_error("refusing to prune 3 of 4", T);
    assert_eq!(s["appliedRevision"], second.as_str());
    assert!(
        get(&["cm", "-n", "prune", "cm1"]).is_some(),
        "nothing was deleted"
    );
    // The annotation for exactly this revision allows it.
    fixture()
        .kubectl(&[
            "annotate",
            "gitops",
            "prune",
            &format!("gitops.cairn.dev/allow-mass-prune={}", &wipe[..12]),
        ])
        .expect("annotate");
    g.wait_applied(&wipe, T);
    eventually("cm1..3 deleted", T, || {
        get(&["cm", "-n", "prune", "cm3"]).is_none().then_some(())
    });
}

#[test]
fn drift_in_managed_fields_is_reverted_within_seconds_and_other_fields_are_left_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    r.write(
        "all.yaml",
        &format!(
            "{}---\n{}---\n{}",
            namespace("drift"),
            configmap("drift", "conf", "git"),
            deployment("drift", "web", 0, "img:1")
        ),
    );
    let rev = r.commit("drift").expect("commit");
    let mut g = Reconciler::start(
        "drift",
        dir.path(),
        &file_config(&r.file_url(), ""),
        Options::default(),
    );
    g.wait_applied(&rev, T);
    let fx = fixture();
    fx.kubectl(&[
        "-n",
        "drift",
        "patch",
        "cm",
        "conf",
        "--type=merge",
        "-p",
        r#"{"data":{"value":"edited","extra":"mine"}}"#,
    ])
    .expect("patch");
    fx.kubectl(&["-n", "drift", "scale", "deploy", "web", "--replicas=3"])
        .expect("scale");
    fx.kubectl(&["-n", "drift", "annotate", "cm", "conf", "team=blue"])
        .expect("annotate");
    let started = std::time::Instant::now();
    eventually("the ConfigMap restored", Duration::from_secs(10), || {
        let cm = get(&["cm", "-n", "drift", "conf"])?;
        (cm["data"]["value"] == "git").then_some(cm)
    });
    eventually("the replicas restored", Duration::from_secs(10), || {
        let d = get(&["deploy", "-n", "drift", "web"])?;
        (d["spec"]["replicas"] == 0).then_some(())
    });
    let took = started.elapsed();
    let cm = get(&["cm", "-n", "drift", "conf"]).expect("cm");
    assert_eq!(
        cm["data"]["extra"], "mine",
        "a field cairn does not manage stays"
    );
    assert_eq!(cm["metadata"]["annotations"]["team"], "blue");
    assert!(took < Duration::from_secs(5), "reverting took {took:?}");
    assert!(g.log_text().contains("drift reverted"));
}

#[test]
fn immutable_field_changes_name_the_field_and_recreate_only_when_annotated() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    let job = |image: &str, annotate: bool| {
        let ann = if annotate {
            "  annotations:\n    gitops.cairn.dev/recreate: allow\n"
        } else {
            ""
        };
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\n  namespace: immut\n{ann}spec:\n  suspend: true\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: {image}\n"
        )
    };
    r.write("ns.yaml", &namespace("immut"));
    r.write("job.yaml", &job("img:1", false));
    let first = r.commit("job").expect("commit");
    let mut g = Reconciler::start(
        "immut",
        dir.path(),
        &file_config(&r.file_url(), ""),
        Options::default(),
    );
    g.wait_applied(&first, T);
    let uid = get(&["job", "-n", "immut", "once"]).expect("job")["metadata"]["uid"].clone();
    r.write("job.yaml", &job("img:2", false));
    r.commit("change the template").expect("commit");
    let s = g.wait_error("immutable", T);
    let err = s["lastError"].as_str().unwrap_or_default();
    assert!(
        err.contains("Job.batch immut/once") && err.contains("spec.template"),
        "{err}"
    );
    assert_eq!(
        get(&["job", "-n", "immut", "once"]).expect("job")["metadata"]["uid"],
        uid
    );
    r.write("job.yaml", &job("img:2", true));
    let third = r.commit("allow recreate").expect("commit");
    g.wait_applied(&third, T);
    let job = get(&["job", "-n", "immut", "once"]).expect("job");
    assert_ne!(job["metadata"]["uid"], uid, "re-created");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:2"
    );
}

#[test]
fn every_kind_of_bad_input_is_refused_with_its_reason_and_the_last_good_state_stays() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    r.write("ns.yaml", &namespace("bad"));
    r.write("good.yaml", &configmap("bad", "good", "1"));
    let good = r.commit("good").expect("commit");
    let mut g = Reconciler::start(
        "bad",
        dir.path(),
        &file_config(&r.file_url(), "maxFileBytes: 4096\n"),
        Options::default(),
    );
    g.wait_applied(&good, T);
    type Edit = Box<dyn Fn(&TestRepo)>;
    let cases: Vec<(&str, Edit, Edit)> = vec![
        (
            "line 3",
            Box::new(|r| {
                r.write(
                    "broken.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n  name: x\n",
                )
            }),
            Box::new(|r| r.remove("broken.yaml")),
        ),
        (
            "kind",
            Box::new(|r| {
                r.write(
                    "nokind.yaml",
                    "apiVersion: v1\nmetadata:\n  name: x\n  namespace: bad\n",
                )
            }),
            Box::new(|r| r.remove("nokind.yaml")),
        ),
        (
            "metadata.name",
            Box::new(|r| {
                r.write(
                    "noname.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  namespace: bad\n",
                )
            }),
            Box::new(|r| r.remove("noname.yaml")),
        ),
        (
            "defined twice",
            Box::new(|r| r.write("dup.yaml", &configmap("bad", "good", "2"))),
            Box::new(|r| r.remove("dup.yaml")),
        ),
        (
            "not served",
            Box::new(|r| {
                r.write("unknown.yaml", "apiVersion: nope.cairn.dev/v1\nkind: Gadget\nmetadata:\n  name: g\n  namespace: bad\n")
            }),
            Box::new(|r| r.remove("unknown.yaml")),
        ),
        (
            "names no namespace",
            Box::new(|r| {
                r.write(
                    "nons.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: floating\n",
                )
            }),
            Box::new(|r| r.remove("nons.yaml")),
        ),
        (
            "limit",
            Box::new(|r| r.write("big.yaml", &configmap("bad", "big", &"x".repeat(5000)))),
            Box::new(|r| r.remove("big.yaml")),
        ),
        (
            "symlink",
            Box::new(|r| r.symlink("link.yaml", "/etc/passwd")),
            Box::new(|r| r.remove("link.yaml")),
        ),
        (
            "UTF-8",
            Box::new(|r| {
                r.write_bytes(
                    "latin1.yaml",
                    b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: caf\xe9\n",
                )
            }),
            Box::new(|r| r.remove("latin1.yaml")),
        ),
    ];
    for (reason, break_it, fix_it) in cases {
        break_it(&r);
        let bad = r.commit(reason).expect("commit");
        let s = g.wait_status(&format!("refusal naming {reason:?}"), T, |s| {
            s["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(&bad[..12]) && e.contains(reason))
        });
        assert_eq!(
            s["appliedRevision"],
            good.as_str(),
            "{reason}: the last good revision stays"
        );
        assert_eq!(s["seenRevision"], bad.as_str());
        assert_eq!(
            get(&["cm", "-n", "bad", "good"]).expect("still there")["data"]["value"],
            "1"
        );
        fix_it(&r);
    }
    let fixed = r.commit("fixed").expect("commit");
    let s = g.wait_applied(&fixed, T);
    assert_eq!(s["lastError"], "");
}

#[test]
fn an_unhealthy_revision_is_rolled_back_to_the_last_healthy_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("health"),
            deployment("health", "api", 0, "img:good")
        ),
    );
    let good = r.commit("healthy").expect("commit");
    let cfg = file_config(&r.file_url(), "health:\n  timeoutSeconds: 4\n");
    let mut g = Reconciler::start("health", dir.path(), &cfg, Options::default());
    g.wait_status("healthy", T, |s| s["lastHealthyRevision"] == good.as_str());
    // One replica never becomes available here (no kubelet): the revision fails.
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("health"),
            deployment("health", "api", 1, "img:broken")
        ),
    );
    let broken = r.commit("broken").expect("commit");
    let s = g.wait_status("rolled back", T, |s| {
        s["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["result"] == "rolled-back-to"))
            && s["appliedRevision"] == good.as_str()
    });
    let failed = s["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["revision"] == broken.as_str() && e["result"] == "failed");
    assert!(failed.is_some(), "the failed revision is recorded: {s}");
    let d = get(&["deploy", "-n", "health", "api"]).expect("deployment");
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:good"
    );
    // The failed head is not retried at every poll.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(g.status()["appliedRevision"], good.as_str());
}

#[test]
fn a_restart_resumes_from_the_applied_revision_without_writing() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    let mut all = namespace("resume");
    for i in 0..20 {
        all.push_str("---\n");
        all.push_str(&configmap("resume", &format!("c{i}"), "v"));
    }
    r.write("all.yaml", &all);
    let rev = r.commit("twenty").expect("commit");
    let cfg = file_config(&r.file_url(), "");
    let mut g = Reconciler::start("resume", dir.path(), &cfg, Options::default());
    g.wait_applied(&rev, T);
    let before =
        get(&["cm", "-n", "resume", "c7"]).expect("cm")["metadata"]["resourceVersion"].clone();
    g.stop();
    drop(g);
    let mut again = Reconciler::start("resume", dir.path(), &cfg, Options::default());
    eventually("resumed", T, || {
        again.log_text().contains("resumed").then_some(())
    });
    let log = again.log_text();
    assert!(
        log.contains("written=0") && log.contains("unchanged=21"),
        "{}",
        tail(&log, 20)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(again.running());
    let after =
        get(&["cm", "-n", "resume", "c7"]).expect("cm")["metadata"]["resourceVersion"].clone();
    assert_eq!(before, after, "nothing re-applied");
    let history = again.status()["history"].clone();
    assert!(
        history.as_array().is_some_and(|h| h
            .iter()
            .any(|e| e["revision"] == rev.as_str() && e["result"] == "applied")),
        "the history survives a restart: {history}"
    );
}

#[test]
fn suspend_stops_applying_and_a_sync_request_fetches_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let r = repo(dir.path());
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("suspend"),
            configmap("suspend", "conf", "1")
        ),
    );
    let first = r.commit("one").expect("commit");
    // Hourly polling: only a sync request can bring a new commit in quickly.
    let cfg = format!(
        "url: {}\nbranch: main\nintervalSeconds: 3600\n",
        r.file_url()
    );
    let mut g = Reconciler::start("suspend", dir.path(), &cfg, Options::default());
    g.wait_applied(&first, T);
    let fx = fixture();
    fx.kubectl(&[
        "patch",
        "gitops",
        "suspend",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ])
    .expect("suspend");
    g.wait_status("suspended", T, |s| s["suspended"] == true);
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("suspend"),
            configmap("suspend", "conf", "2")
        ),
    );
    let second = r.commit("two").expect("commit");
    fx.kubectl(&[
        "annotate",
        "gitops",
        "suspend",
        "gitops.cairn.dev/sync-requested-at=1",
        "--overwrite",
    ])
    .expect("request");
    fx.kubectl(&[
        "-n",
        "suspend",
        "patch",
        "cm",
        "conf",
        "--type=merge",
        "-p",
        r#"{"data":{"value":"manual"}}"#,
    ])
    .expect("edit");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        g.status()["appliedRevision"],
        first.as_str(),
        "suspended: nothing applied"
    );
    assert_eq!(
        get(&["cm", "-n", "suspend", "conf"]).expect("cm")["data"]["value"],
        "manual",
        "suspended: drift kept"
    );
    fx.kubectl(&[
        "patch",
        "gitops",
        "suspend",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ])
    .expect("resume");
    g.wait_applied(&second, T);
    r.write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            namespace("suspend"),
            configmap("suspend", "conf", "3")
        ),
    );
    let third = r.commit("three").expect("commit");
    fx.kubectl(&[
        "annotate",
        "gitops",
        "suspend",
        "gitops.cairn.dev/sync-requested-at=2",
        "--overwrite",
    ])
    .expect("request");
    g.wait_applied(&third, Duration::from_secs(10));
    assert_eq!(
        get(&["cm", "-n", "suspend", "conf"]).expect("cm")["data"]["value"],
        "3"
    );
}
