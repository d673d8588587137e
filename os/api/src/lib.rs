//! The machine API shared by its server (`cairn-apid`) and its client (`cairnctl`):
//! the gRPC protocol generated from `proto/machine.proto`, the roles a client
//! certificate carries, and the TLS settings (TLS 1.3 only, mutual).

#![forbid(unsafe_code)]

pub mod proto {
    #![allow(clippy::all, rust_2018_idioms, missing_docs)]
    tonic::include_proto!("cairn.machine.v1");
}

mod role;
mod tls;

pub use role::{Identity, Role, RoleError};
pub use tls::{TlsError, client_config, server_config, server_name};

/// The port the machine API listens on, on every address of the node.
pub const DEFAULT_PORT: u16 = 50000;
