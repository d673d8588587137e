//! The fixture itself: a real control plane answers, the controller-manager runs
//! its controllers, and dropping the fixture leaves no process behind.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cairn_testkube::KubeFixture;

#[test]
fn control_plane_runs_and_is_gone_after_drop() -> Result<()> {
    let fixture = KubeFixture::start()?;
    eprintln!(
        "fixture started in {:.1} s",
        fixture.started_in().as_secs_f64()
    );
    let pids = fixture.pids();
    assert_eq!(
        pids.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager"
    );

    assert_eq!(fixture.kubectl(&["get", "--raw", "/readyz"])?.trim(), "ok");
    assert!(fixture.kubeconfig().contains(&fixture.api_server()));
    let tls = fixture.etcd_tls();
    assert!(tls.ca.is_file() && tls.cert.is_file() && tls.key.is_file());
    assert!(fixture.etcd_endpoint().starts_with("https://127.0.0.1:"));

    // The deployment controller (in the controller-manager) creates a ReplicaSet.
    fixture.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--namespace=default",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owners = fixture.kubectl(&[
            "get",
            "replicasets",
            "--namespace=default",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[*].name}",
        ])?;
        if owners.split_whitespace().any(|o| o == "web") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no ReplicaSet for deployment web after 60 s\n{}",
                fixture.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let dir = fixture.dir().to_path_buf();
    drop(fixture);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
    Ok(())
}
