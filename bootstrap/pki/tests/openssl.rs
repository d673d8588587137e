//! A generated bundle as the real openssl CLI sees it: chains verify, SANs, EKUs,
//! subjects and file modes are what the components need.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use cairn_pki::{Bundle, ClusterParams, Existing, Hostname, OffsetDateTime, paths};

/// One bundle for node-1, written once and shared by every test here.
fn written() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, dir) = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let node = Hostname::try_from("node-1".to_string()).expect("hostname");
        let mut params = ClusterParams::new(
            node,
            "10.0.2.15".parse().expect("ip"),
            OffsetDateTime::now_utc(),
        );
        params.extra_sans = vec!["api.example.com".into(), "192.0.2.7".into()];
        let bundle = cairn_pki::generate(&params).expect("generate");
        let dir = tmp.path().join("secrets");
        bundle.write_to(&dir, Existing::Keep).expect("write");
        (tmp, dir)
    });
    dir
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn path(rel: &str) -> String {
    written().join(rel).to_string_lossy().into_owned()
}

const LEAVES: [(paths::CertPaths, paths::CertPaths, &str); 8] = [
    (paths::APISERVER, paths::CA, "sslserver"),
    (paths::APISERVER_KUBELET_CLIENT, paths::CA, "sslclient"),
    (paths::APISERVER_ETCD_CLIENT, paths::ETCD_CA, "sslclient"),
    (paths::ETCD_SERVER, paths::ETCD_CA, "sslserver"),
    (paths::ETCD_PEER, paths::ETCD_CA, "sslclient"),
    (paths::ETCD_HEALTHCHECK_CLIENT, paths::ETCD_CA, "sslclient"),
    (
        paths::FRONT_PROXY_CLIENT,
        paths::FRONT_PROXY_CA,
        "sslclient",
    ),
    (paths::OS_ADMIN, paths::OS_CA, "sslclient"),
];

#[test]
fn every_leaf_verifies_against_its_ca_for_its_purpose() {
    for (leaf, ca, purpose) in LEAVES {
        let out = openssl(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            &path(ca.crt),
            &path(leaf.crt),
        ]);
        assert!(out.contains(": OK"), "{}: {out}", leaf.crt);
    }
    // And not against another CA.
    let out = Command::new("/usr/bin/openssl")
        .args([
            "verify",
            "-CAfile",
            &path(paths::ETCD_CA.crt),
            &path(paths::APISERVER.crt),
        ])
        .output()
        .expect("run openssl");
    assert!(!out.status.success());
}

#[test]
fn cas_are_ten_year_self_signed_cas() {
    for ca in [
        paths::CA,
        paths::ETCD_CA,
        paths::FRONT_PROXY_CA,
        paths::OS_CA,
    ] {
        let text = openssl(&["x509", "-noout", "-text", "-in", &path(ca.crt)]);
        assert!(text.contains("CA:TRUE"), "{}: {text}", ca.crt);
        assert!(
            text.contains("Certificate Sign, CRL Sign"),
            "{}: {text}",
            ca.crt
        );
        openssl(&["verify", "-CAfile", &path(ca.crt), &path(ca.crt)]);
        // Valid for ~10 years: still valid in 9, not in 11.
        let nine = (9 * 365 * 86400).to_string();
        openssl(&["x509", "-noout", "-checkend", &nine, "-in", &path(ca.crt)]);
    }
    let subject = openssl(&["x509", "-noout", "-subject", "-in", &path(paths::CA.crt)]);
    assert!(subject.contains("CN = kubernetes"), "{subject}");
    let subject = openssl(&["x509", "-noout", "-subject", "-in", &path(paths::OS_CA.crt)]);
    assert!(subject.contains("CN = cairn-os-ca"), "{subject}");
}

#[test]
fn apiserver_and_etcd_sans() {
    let sans = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &path(paths::APISERVER.crt),
    ]);
    for want in [
        "DNS:node-1",
        "DNS:kubernetes,",
        "DNS:kubernetes.default,",
        "DNS:kubernetes.default.svc,",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
        "IP Address:10.0.2.15",
        "IP Address:127.0.0.1",
        "DNS:localhost",
        "DNS:api.example.com",
        "IP Address:192.0.2.7",
    ] {
        assert!(sans.contains(want), "apiserver lacks {want}: {sans}");
    }
    for etcd in [paths::ETCD_SERVER, paths::ETCD_PEER] {
        let sans = openssl(&[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            &path(etcd.crt),
        ]);
        for want in [
            "DNS:node-1",
            "DNS:localhost",
            "IP Address:10.0.2.15",
            "IP Address:127.0.0.1",
            "IP Address:0:0:0:0:0:0:0:1",
        ] {
            assert!(sans.contains(want), "{} lacks {want}: {sans}", etcd.crt);
        }
        let subject = openssl(&["x509", "-noout", "-subject", "-in", &path(etcd.crt)]);
        assert!(subject.contains("CN = node-1"), "{subject}");
    }
}

#[test]
fn extended_key_usages() {
    let eku = |p: paths::CertPaths| {
        openssl(&[
            "x509",
            "-noout",
            "-ext",
            "extendedKeyUsage",
            "-in",
            &path(p.crt),
        ])
    };
    let (server, client) = (
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
    );
    let api = eku(paths::APISERVER);
    assert!(api.contains(server) && !api.contains(client), "{api}");
    for both in [paths::ETCD_SERVER, paths::ETCD_PEER] {
        let e = eku(both);
        assert!(
            e.contains(server) && e.contains(client),
            "{}: {e}",
            both.crt
        );
    }
    for (leaf, _, purpose) in LEAVES {
        if purpose == "sslclient" && leaf != paths::ETCD_PEER {
            let e = eku(leaf);
            assert!(
                e.contains(client) && !e.contains(server),
                "{}: {e}",
                leaf.crt
            );
        }
    }
    let text = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        &path(paths::APISERVER_KUBELET_CLIENT.crt),
    ]);
    assert!(
        text.contains("CA:FALSE") && text.contains("Digital Signature"),
        "{text}"
    );
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-in",
        &path(paths::APISERVER_KUBELET_CLIENT.crt),
    ]);
    assert!(
        subject.contains("O = kubeadm:cluster-admins")
            && subject.contains("CN = kube-apiserver-kubelet-client")
    );
}

#[test]
fn leaves_last_a_year() {
    let dates = openssl(&[
        "x509",
        "-noout",
        "-startdate",
        "-enddate",
        "-in",
        &path(paths::APISERVER.crt),
    ]);
    let day = 86400;
    openssl(&[
        "x509",
        "-noout",
        "-checkend",
        &(364 * day).to_string(),
        "-in",
        &path(paths::APISERVER.crt),
    ]);
    let out = Command::new("/usr/bin/openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(366 * day).to_string(),
            "-in",
            &path(paths::APISERVER.crt),
        ])
        .output()
        .expect("run openssl");
    assert!(
        !out.status.success(),
        "expected expiry within 366 days: {dates}"
    );
}

#[test]
fn file_modes() {
    let bundle = Bundle::load(written()).expect("load");
    assert!(bundle.len() >= 30, "{bundle:?}");
    for (rel, _) in bundle.files() {
        let mode = std::fs::metadata(written().join(rel))
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        let name = rel.to_string_lossy();
        let want = if name.ends_with(".key") || name.ends_with(".conf") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode, want, "{name} has mode {mode:o}");
    }
}

#[test]
fn service_account_keys_are_a_p256_pair() {
    let text = openssl(&["pkey", "-in", &path(paths::SA_KEY), "-noout", "-text"]);
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "not P-256"
    );
    let derived = openssl(&["pkey", "-in", &path(paths::SA_KEY), "-pubout"]);
    let stored = std::fs::read_to_string(path(paths::SA_PUB)).expect("sa.pub");
    assert_eq!(derived.trim(), stored.trim());
}

#[test]
fn kubeconfigs_carry_the_right_users() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = std::fs::read(path(paths::CA.crt)).expect("ca");
    let cases = [
        (
            paths::ADMIN_CONF,
            "CN = kubernetes-admin",
            Some("O = kubeadm:cluster-admins"),
            "https://10.0.2.15:6443",
        ),
        (
            paths::SUPER_ADMIN_CONF,
            "CN = kubernetes-super-admin",
            Some("O = system:masters"),
            "https://10.0.2.15:6443",
        ),
        (
            paths::CONTROLLER_MANAGER_CONF,
            "CN = system:kube-controller-manager",
            None,
            "https://127.0.0.1:6443",
        ),
        (
            paths::SCHEDULER_CONF,
            "CN = system:kube-scheduler",
            None,
            "https://127.0.0.1:6443",
        ),
        (
            paths::KUBELET_CONF,
            "CN = system:node:node-1",
            Some("O = system:nodes"),
            "https://127.0.0.1:6443",
        ),
        (
            paths::KUBE_PROXY_CONF,
            "CN = system:kube-proxy",
            None,
            "https://127.0.0.1:6443",
        ),
    ];
    for (conf, cn, org, server) in cases {
        let text = std::fs::read_to_string(path(conf)).expect("read kubeconfig");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(doc["kind"].as_str(), Some("Config"), "{conf}");
        let context = doc["current-context"].as_str().expect("current-context");
        assert_eq!(doc["contexts"][0]["name"].as_str(), Some(context));
        let cluster = &doc["clusters"][0]["cluster"];
        assert_eq!(cluster["server"].as_str(), Some(server), "{conf}");
        let decode = |v: &serde_yaml::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("string"))
                .expect("base64")
        };
        assert_eq!(
            decode(&cluster["certificate-authority-data"]),
            ca,
            "{conf}: embedded CA differs from ca.crt"
        );
        let user = &doc["users"][0]["user"];
        let cert = tmp.path().join(format!("{conf}.crt"));
        std::fs::write(&cert, decode(&user["client-certificate-data"])).expect("write cert");
        let key = tmp.path().join(format!("{conf}.key"));
        std::fs::write(&key, decode(&user["client-key-data"])).expect("write key");
        let cert = cert.to_string_lossy();

        let subject = openssl(&["x509", "-noout", "-subject", "-in", &cert]);
        assert!(subject.contains(cn), "{conf}: {subject}");
        match org {
            Some(o) => assert!(subject.contains(o), "{conf}: {subject}"),
            None => assert!(!subject.contains("O = "), "{conf}: {subject}"),
        }
        openssl(&[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &path(paths::CA.crt),
            &cert,
        ]);
        let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", &cert]);
        let from_key = openssl(&["pkey", "-pubout", "-in", &key.to_string_lossy()]);
        assert_eq!(
            from_cert, from_key,
            "{conf}: client key does not match its certificate"
        );
    }
}

#[test]
fn the_written_bundle_checks_out() {
    let node = Hostname::try_from("node-1".to_string()).expect("hostname");
    let mut params = ClusterParams::new(
        node,
        "10.0.2.15".parse().expect("ip"),
        OffsetDateTime::now_utc(),
    );
    params.extra_sans = vec!["api.example.com".into(), "192.0.2.7".into()];
    let bundle = Bundle::load(written()).expect("load");
    cairn_pki::check(&bundle, &params).expect("check");
}
