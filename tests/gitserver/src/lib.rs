//! Real git servers on 127.0.0.1 for the GitOps reconciler's tests (and the demo).
//!
//! - [`HttpsGitServer`]: smart HTTP over HTTPS, Debian's `git http-backend` run as CGI
//!   behind a token check, with a self-signed CA of its own;
//! - [`SshGitServer`]: Debian's `sshd` with generated host and client keys;
//! - [`TestRepo`]: a bare repository under a server root plus a work tree driven
//!   through the `git` CLI, with [`SshSigningKey`] and [`GpgKey`] for signed commits.
//!
//! Everything runs the real tools (`git`, `sshd`, `ssh-keygen`, `gpg`), so the
//! reconciler is tested against what it meets in the field. The servers run on
//! threads (or processes) of their own and work from sync and async tests alike.

#![forbid(unsafe_code)]
// Unit tests may unwrap; library code may not (workspace lint `unwrap_used`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cmd;
mod https;
mod repo;
mod ssh;
mod tls;

pub use cmd::git;
pub use https::HttpsGitServer;
pub use repo::{GpgKey, SshSigningKey, TestRepo};
pub use ssh::SshGitServer;
