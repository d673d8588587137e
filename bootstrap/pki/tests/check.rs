//! `check` refuses bundles that do not fit the node, naming the file and the problem.

use std::sync::OnceLock;

use cairn_pki::{Bundle, ClusterParams, Hostname, OffsetDateTime, PkiError, Secret, paths};
use time::Duration;

fn params(node: &str, now: OffsetDateTime) -> ClusterParams {
    let node = Hostname::try_from(node.to_string()).expect("hostname");
    ClusterParams::new(node, "10.0.2.15".parse().expect("ip"), now)
}

fn now() -> OffsetDateTime {
    static NOW: OnceLock<OffsetDateTime> = OnceLock::new();
    *NOW.get_or_init(OffsetDateTime::now_utc)
}

fn node1() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| cairn_pki::generate(&params("node-1", now())).expect("generate"))
}

fn rejected(bundle: &Bundle, params: &ClusterParams) -> Vec<String> {
    match cairn_pki::check(bundle, params) {
        Err(e @ PkiError::Rejected { .. }) => {
            let shown = e.to_string();
            assert!(
                !shown.contains("PRIVATE KEY") && !shown.contains("BEGIN"),
                "{shown}"
            );
            e.problems().iter().map(ToString::to_string).collect()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn has(problems: &[String], want: &str) {
    assert!(
        problems.iter().any(|p| p.contains(want)),
        "no problem containing {want:?} in {problems:#?}"
    );
}

#[test]
fn accepts_its_own_bundle() {
    cairn_pki::check(node1(), &params("node-1", now())).expect("check");
    // Still fine eleven months later.
    cairn_pki::check(node1(), &params("node-1", now() + Duration::days(330))).expect("check later");
}

#[test]
fn rejects_a_bundle_for_another_node() {
    let problems = rejected(node1(), &params("node-2", now()));
    has(
        &problems,
        "pki/apiserver.crt does not cover node name `node-2` (SANs: node-1, kubernetes,",
    );
    has(
        &problems,
        "pki/etcd/server.crt has CN `node-1` but this node needs `node-2`",
    );
    has(
        &problems,
        "pki/etcd/peer.crt does not cover node name `node-2`",
    );
    has(
        &problems,
        "kubelet.conf has CN `system:node:node-1` but this node needs `system:node:node-2`",
    );
}

#[test]
fn rejects_another_advertise_ip_or_service_network() {
    let mut p = params("node-1", now());
    p.advertise_ip = "10.0.2.16".parse().expect("ip");
    has(
        &rejected(node1(), &p),
        "pki/apiserver.crt does not cover advertise IP `10.0.2.16`",
    );
    let mut p = params("node-1", now());
    p.service_cidr = "10.100.0.0/16".parse().expect("cidr");
    has(
        &rejected(node1(), &p),
        "pki/apiserver.crt does not cover first service IP `10.100.0.1`",
    );
}

#[test]
fn rejects_expired_certificates() {
    let old =
        cairn_pki::generate(&params("node-1", now() - Duration::days(730))).expect("generate");
    let problems = rejected(&old, &params("node-1", now()));
    has(&problems, "pki/apiserver.crt expired on");
    has(&problems, "pki/etcd/server.crt expired on");
    has(&problems, "admin.conf expired on");
    // The ten-year CAs are still fine.
    assert!(
        !problems.iter().any(|p| p.starts_with("pki/ca.crt")),
        "{problems:#?}"
    );
}

#[test]
fn rejects_a_leaf_from_another_ca() {
    let other = cairn_pki::generate(&params("node-1", now())).expect("generate");
    let mut mixed = node1().clone();
    for file in [paths::APISERVER.crt, paths::APISERVER.key] {
        mixed.insert(file, other.get(file).expect("file").clone());
    }
    mixed.insert(
        paths::ADMIN_CONF,
        other.get(paths::ADMIN_CONF).expect("file").clone(),
    );
    let problems = rejected(&mixed, &params("node-1", now()));
    has(&problems, "pki/apiserver.crt is not signed by pki/ca.crt");
    has(&problems, "admin.conf is not signed by pki/ca.crt");
    has(&problems, "admin.conf does not embed pki/ca.crt");
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn rejects_mismatched_keys_and_missing_files() {
    let mut broken = node1().clone();
    let etcd_key = broken.get(paths::ETCD_PEER.key).expect("key").clone();
    broken.insert(paths::ETCD_SERVER.key, etcd_key);
    broken.remove(paths::FRONT_PROXY_CA.key);
    broken.insert(paths::SA_PUB, Secret::public(b"garbage".to_vec()));
    let problems = rejected(&broken, &params("node-1", now()));
    has(
        &problems,
        "pki/etcd/server.crt does not belong to its private key pki/etcd/server.key",
    );
    has(&problems, "pki/front-proxy-ca.key is missing");
    has(&problems, "pki/sa.pub is not PEM");
}
