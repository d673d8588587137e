//! Who may call what: the caller's identity comes from the verified client
//! certificate, and one table names the least role of every method.

use std::fmt;

use cairn_api::{Identity, Role, RoleError};
use tonic::{Request, Status};

/// Every RPC of the `Machine` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Version,
    Health,
    ServiceList,
    ServiceStart,
    ServiceStop,
    ServiceRestart,
    ServiceKill,
    Logs,
    Dmesg,
    Reboot,
    Shutdown,
    Kubeconfig,
    EtcdMembers,
    EtcdStatus,
    EtcdDefragment,
    EtcdSnapshot,
    ConfigGet,
    ConfigApply,
    GitOpsStatus,
    GitOpsSync,
    GitOpsSuspend,
}

impl Method {
    pub const ALL: [Method; 21] = [
        Method::Version,
        Method::Health,
        Method::ServiceList,
        Method::ServiceStart,
        Method::ServiceStop,
        Method::ServiceRestart,
        Method::ServiceKill,
        Method::Logs,
        Method::Dmesg,
        Method::Reboot,
        Method::Shutdown,
        Method::Kubeconfig,
        Method::EtcdMembers,
        Method::EtcdStatus,
        Method::EtcdDefragment,
        Method::EtcdSnapshot,
        Method::ConfigGet,
        Method::ConfigApply,
        Method::GitOpsStatus,
        Method::GitOpsSync,
        Method::GitOpsSuspend,
    ];

    /// The RPC's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Method::Version => "Version",
            Method::Health => "Health",
            Method::ServiceList => "ServiceList",
            Method::ServiceStart => "ServiceStart",
            Method::ServiceStop => "ServiceStop",
            Method::ServiceRestart => "ServiceRestart",
            Method::ServiceKill => "ServiceKill",
            Method::Logs => "Logs",
            Method::Dmesg => "Dmesg",
            Method::Reboot => "Reboot",
            Method::Shutdown => "Shutdown",
            Method::Kubeconfig => "Kubeconfig",
            Method::EtcdMembers => "EtcdMembers",
            Method::EtcdStatus => "EtcdStatus",
            Method::EtcdDefragment => "EtcdDefragment",
            Method::EtcdSnapshot => "EtcdSnapshot",
            Method::ConfigGet => "ConfigGet",
            Method::ConfigApply => "ConfigApply",
            Method::GitOpsStatus => "GitOpsStatus",
            Method::GitOpsSync => "GitOpsSync",
            Method::GitOpsSuspend => "GitOpsSuspend",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// THE authorization table: the least role each method needs (as the proto's
/// comments say). Each role includes the ones below it.
pub fn least_role(method: Method) -> Role {
    use Method::*;
    match method {
        Version | Health | ServiceList | Logs | Dmesg | EtcdMembers | EtcdStatus | ConfigGet
        | GitOpsStatus => Role::Reader,
        ServiceStart | ServiceStop | ServiceRestart | ServiceKill | GitOpsSync | GitOpsSuspend => {
            Role::Operator
        }
        Reboot | Shutdown | Kubeconfig | EtcdDefragment | EtcdSnapshot | ConfigApply => Role::Admin,
    }
}

/// Why a call was refused before anything was done.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No verified client certificate on the connection (cannot happen behind the
    /// TLS acceptor, which requires one).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate carries no os:* role, or cannot be read.
    #[error("{0}")]
    NoRole(RoleError),
    #[error("{role} may not call {method} (needs {needs})")]
    TooLow {
        role: Role,
        method: Method,
        needs: Role,
    },
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        match d {
            Denied::TooLow { .. } => Status::permission_denied(d.to_string()),
            Denied::NoCertificate | Denied::NoRole(_) => Status::unauthenticated(d.to_string()),
        }
    }
}

/// Decides whether the holder of the leaf certificate `leaf_der` may call `method`.
pub fn authorize_der(
    leaf_der: &[u8],
    method: Method,
) -> Result<Identity, (Option<Identity>, Denied)> {
    let identity = Identity::from_der(leaf_der).map_err(|e| (None, Denied::NoRole(e)))?;
    let needs = least_role(method);
    if identity.role < needs {
        let denied = Denied::TooLow {
            role: identity.role,
            method,
            needs,
        };
        return Err((Some(identity), denied));
    }
    Ok(identity)
}

/// [`authorize_der`] on the leaf certificate of the request's TLS connection.
/// On refusal the identity is returned too when it was known (for the log).
pub fn authorize<T>(
    request: &Request<T>,
    method: Method,
) -> Result<Identity, (Option<Identity>, Denied)> {
    let certs = request.peer_certs().ok_or((None, Denied::NoCertificate))?;
    let leaf = certs.first().ok_or((None, Denied::NoCertificate))?;
    authorize_der(leaf.as_ref(), method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(org: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        if let Some(org) = org {
            dn.push(rcgen::DnType::OrganizationName, org);
        }
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn table_matches_the_proto() {
        let readers = Method::ALL
            .iter()
            .filter(|m| least_role(**m) == Role::Reader)
            .count();
        assert_eq!(readers, 9);
        assert_eq!(least_role(Method::ServiceKill), Role::Operator);
        assert_eq!(least_role(Method::GitOpsStatus), Role::Reader);
        assert_eq!(least_role(Method::GitOpsSync), Role::Operator);
        assert_eq!(least_role(Method::GitOpsSuspend), Role::Operator);
        assert_eq!(least_role(Method::ConfigApply), Role::Admin);
        assert_eq!(least_role(Method::EtcdSnapshot), Role::Admin);
        assert_eq!(least_role(Method::ConfigGet), Role::Reader);
    }

    #[test]
    fn roles_are_checked() {
        let reader = cert(Some("os:reader"));
        let (who, denied) = authorize_der(&reader, Method::Reboot).unwrap_err();
        assert_eq!(who.map(|i| i.name), Some("alice".to_owned()));
        assert_eq!(
            denied.to_string(),
            "os:reader may not call Reboot (needs os:admin)"
        );
        assert_eq!(Status::from(denied).code(), tonic::Code::PermissionDenied);
        assert_eq!(
            authorize_der(&reader, Method::Version).unwrap().role,
            Role::Reader
        );
        let admin = cert(Some("os:admin"));
        for m in Method::ALL {
            assert!(authorize_der(&admin, m).is_ok(), "{m}");
        }
        let none = cert(Some("system:masters"));
        let (_, denied) = authorize_der(&none, Method::Version).unwrap_err();
        assert_eq!(Status::from(denied).code(), tonic::Code::Unauthenticated);
        let (_, denied) = authorize_der(&cert(None), Method::Version).unwrap_err();
        assert_eq!(Status::from(denied).code(), tonic::Code::Unauthenticated);
    }
}
