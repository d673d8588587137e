//! `gen config` output is a valid machine config plus a bundle that passes the same
//! check the node runs at boot; a bundle made for another node name is refused.

use std::os::unix::fs::PermissionsExt as _;

use cairn_machine_config::{Hostname, MachineConfig};
use cairn_pki::{Bundle, ClusterParams, OffsetDateTime};

fn generate(dir: &std::path::Path, name: &str) -> cairnctl::Generated {
    cairnctl::gen_config(&cairnctl::GenOptions {
        name: Hostname::try_from(name.to_string()).expect("name"),
        ip: "10.0.2.15".parse().expect("ip"),
        base_config: None,
        endpoint: Some("https://127.0.0.1:16443".into()),
        out_dir: dir.to_path_buf(),
        force: false,
    })
    .expect("gen config")
}

#[test]
fn generated_bundle_fits_the_node_and_only_that_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = generate(dir.path(), "node-a");
    let cfg = MachineConfig::parse(
        "machine.yaml",
        &std::fs::read_to_string(&out.machine_config).expect("read"),
    )
    .expect("valid config");
    assert_eq!(cfg.machine.hostname.as_str(), "node-a");
    assert_eq!(
        cfg.cluster.api_endpoint.as_deref(),
        Some("https://127.0.0.1:16443")
    );
    let mode = std::fs::metadata(&out.secrets)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let bundle = Bundle::from_document(&std::fs::read_to_string(&out.secrets).expect("read"))
        .expect("bundle");
    let ip = "10.0.2.15".parse().expect("ip");
    let params = ClusterParams::from_machine_config(&cfg, ip, OffsetDateTime::now_utc());
    cairn_pki::check(&bundle, &params).expect("the bundle fits its node");

    let mut other = cfg.clone();
    other.machine.hostname = Hostname::try_from("node-b".to_string()).expect("name");
    let params = ClusterParams::from_machine_config(&other, ip, OffsetDateTime::now_utc());
    let err = cairn_pki::check(&bundle, &params)
        .expect_err("another node's bundle")
        .to_string();
    assert!(err.contains("node-b"), "{err}");

    let admin = std::fs::read_to_string(&out.admin_kubeconfig).expect("admin");
    assert!(admin.contains("server: https://127.0.0.1:16443"), "{admin}");
    let forwarded = cairnctl::admin_kubeconfig(&out.secrets, Some("https://127.0.0.1:7443"))
        .expect("kubeconfig");
    assert!(forwarded.contains("https://127.0.0.1:7443"), "{forwarded}");

    let again = cairnctl::gen_config(&cairnctl::GenOptions {
        name: Hostname::try_from("node-a".to_string()).expect("name"),
        ip,
        base_config: None,
        endpoint: None,
        out_dir: dir.path().to_path_buf(),
        force: false,
    });
    assert!(
        again
            .expect_err("no overwrite")
            .to_string()
            .contains("--force")
    );
}
