//! Building a whole bundle from `ClusterParams`.

use std::collections::BTreeMap;

use crate::issue::{self, IssuedCa};
use crate::kubeconfig::{self, KubeconfigParts};
use crate::layout::{self, CaSpec};
use crate::{Bundle, ClusterParams, PkiError, Secret, paths};

/// Generates every CA, leaf, the service-account key pair and the kubeconfigs.
pub fn generate(params: &ClusterParams) -> Result<Bundle, PkiError> {
    params.validate()?;
    let now = params.now;
    let mut bundle = Bundle::new();

    let mut cas: BTreeMap<&'static str, IssuedCa> = BTreeMap::new();
    for spec in layout::CAS {
        let ca = issue::ca(&spec, now)?;
        bundle.insert(spec.paths.crt, Secret::public(ca.cert_pem.clone()));
        bundle.insert(spec.paths.key, Secret::private(ca.key_pem()));
        cas.insert(spec.paths.crt, ca);
    }
    let ca_of = |spec: &CaSpec| {
        cas.get(spec.paths.crt).ok_or_else(|| PkiError::Generate {
            file: spec.paths.crt.into(),
            message: "CA missing from the layout".into(),
        })
    };

    for spec in layout::leaves(params)? {
        let issued = issue::leaf(&spec, ca_of(&spec.ca)?, now)?;
        bundle.insert(spec.paths.crt, Secret::public(issued.cert_pem));
        bundle.insert(spec.paths.key, Secret::private(issued.key_pem));
    }

    let sa = issue::new_key(paths::SA_KEY)?;
    bundle.insert(paths::SA_KEY, Secret::private(sa.serialize_pem()));
    bundle.insert(paths::SA_PUB, Secret::public(sa.public_key_pem()));

    for spec in layout::kubeconfigs(params) {
        let ca = ca_of(&spec.user.ca)?;
        let issued = issue::leaf(&spec.user, ca, now)?;
        let text = kubeconfig::render(&KubeconfigParts {
            cluster_name: params.cluster_name.clone(),
            server: spec.server.clone(),
            ca_pem: ca.cert_pem.clone().into_bytes(),
            user_name: spec.user.common_name.clone(),
            cert_pem: issued.cert_pem.into_bytes(),
            key_pem: issued.key_pem.into_bytes(),
        })
        .map_err(|e| PkiError::Generate {
            file: spec.file.into(),
            message: e.to_string(),
        })?;
        bundle.insert(spec.file, Secret::private(text));
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hostname, issue};
    use time::{Duration, OffsetDateTime};
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    /// 2030-01-01 12:00:00 UTC.
    const NOW: i64 = 1_893_499_200;

    fn params() -> ClusterParams {
        let node = Hostname::try_from("node-1".to_string()).expect("hostname");
        ClusterParams::new(
            node,
            "10.0.2.15".parse().expect("ip"),
            OffsetDateTime::from_unix_timestamp(NOW).expect("time") + Duration::milliseconds(750),
        )
    }

    /// (notBefore, notAfter) as unix seconds.
    fn validity(bundle: &Bundle, file: &str) -> (i64, i64) {
        let pem = bundle.get(file).expect("file");
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.bytes()).expect("pem");
        let (_, cert) = X509Certificate::from_der(&block.contents).expect("der");
        (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        )
    }

    #[test]
    fn validity_periods_and_backdating() {
        let bundle = generate(&params()).expect("generate");
        let now = NOW;
        let backdated = now - issue::BACKDATE.whole_seconds();
        assert_eq!(
            validity(&bundle, paths::CA.crt),
            (backdated, now + issue::CA_VALIDITY.whole_seconds())
        );
        assert_eq!(
            validity(&bundle, paths::ETCD_SERVER.crt),
            (backdated, now + issue::LEAF_VALIDITY.whole_seconds())
        );
        assert_eq!(issue::CA_VALIDITY.whole_days(), 3650);
        assert_eq!(issue::LEAF_VALIDITY.whole_days(), 365);
    }

    #[test]
    fn holds_every_file_with_the_right_mode() {
        let bundle = generate(&params()).expect("generate");
        assert_eq!(bundle.len(), 4 * 2 + 9 * 2 + 2 + 6);
        for (path, secret) in bundle.files() {
            let name = path.to_string_lossy();
            let private = name.ends_with(".key") || name.ends_with(".conf");
            assert_eq!(secret.mode(), if private { 0o600 } else { 0o644 }, "{name}");
        }
        crate::check(&bundle, &params()).expect("check");
    }

    #[test]
    fn refuses_bad_params_by_name() {
        let mut p = params();
        p.dns_domain = "Cluster Local".into();
        let e = generate(&p).expect_err("bad domain").to_string();
        assert!(e.contains("dnsDomain"), "{e}");
    }

    #[test]
    fn follows_the_machine_config() {
        let doc = "apiVersion: cairn.dev/v1alpha1\nkind: MachineConfig\nmachine:\n  hostname: cp-7\ncluster:\n  name: lab\n  serviceCidr: 10.100.0.0/16\n  dnsDomain: lab.internal\n";
        let cfg = cairn_machine_config::MachineConfig::parse("test", doc).expect("config");
        let p = ClusterParams::from_machine_config(
            &cfg,
            "192.0.2.10".parse().expect("ip"),
            params().now,
        );
        assert_eq!(
            (p.cluster_name.as_str(), p.node_name.as_str()),
            ("lab", "cp-7")
        );
        assert_eq!(p.first_service_ip().expect("ip").to_string(), "10.100.0.1");
        let leaves = crate::layout::leaves(&p).expect("leaves");
        let sans: Vec<String> = leaves[0].sans.iter().map(|s| s.value.to_string()).collect();
        assert!(
            sans.contains(&"kubernetes.default.svc.lab.internal".to_string()),
            "{sans:?}"
        );
        assert!(sans.contains(&"10.100.0.1".to_string()), "{sans:?}");
    }
}
