//! Who is calling: the role in a client certificate's Organization.

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::{FromDer, X509Certificate};

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read state, logs and configuration (secrets redacted).
    Reader,
    /// Also start, stop, restart and signal services.
    Operator,
    /// Also reboot, shut down, fetch credentials, change the config, etcd maintenance.
    Admin,
}

impl Role {
    /// The certificate Organization that grants this role.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Reader => "os:reader",
            Role::Operator => "os:operator",
            Role::Admin => "os:admin",
        }
    }

    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
    }
}

impl FromStr for Role {
    type Err = RoleError;
    /// `os:reader`, or just `reader`.
    fn from_str(s: &str) -> Result<Role, RoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.organization() == s || r.organization().strip_prefix("os:") == Some(s))
            .ok_or_else(|| RoleError::Unknown(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleError {
    #[error("unknown role {0:?} (expected os:reader, os:operator or os:admin)")]
    Unknown(String),
    #[error("the client certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the client certificate (CN {0:?}) carries no os:* role in its Organization")]
    NoRole(String),
}

/// A verified caller: its certificate's Common Name and the highest role its
/// Organizations grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// Reads the identity from a DER certificate (already verified by TLS).
    pub fn from_der(der: &[u8]) -> Result<Identity, RoleError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| RoleError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .next()
            .unwrap_or_default()
            .to_owned();
        let role = subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .filter_map(|o| Role::ALL.into_iter().find(|r| r.organization() == o))
            .max()
            .ok_or_else(|| RoleError::NoRole(name.clone()))?;
        Ok(Identity { name, role })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("reader".parse(), Ok(Role::Reader));
        assert_eq!("os:admin".parse(), Ok(Role::Admin));
        assert!(matches!("root".parse::<Role>(), Err(RoleError::Unknown(_))));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
    }
}
