//! cairn-webtest: the workload cairn's pod and service tests run, our own small
//! program in a `FROM scratch`-style OCI image (see
//! `cairn_image::oci::webtest_image`), so it must be a static executable:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p cairn-webtest \
//!     --target x86_64-unknown-linux-gnu --target-dir target/static
//! ```
//!
//! (`cairn_image::static_bins::build_static` runs exactly that.)
//!
//! - `serve [--port 8080] [--term-file PATH]`: an HTTP/1.1 server on 0.0.0.0
//!   answering `GET /` with the hostname (the pod name) and `GET /healthz` with
//!   `ok`. As PID 1 of a container it handles SIGTERM/SIGINT itself and, with
//!   `--term-file`, leaves a durable line there as proof of a graceful stop.
//! - `get URL [--timeout-s 5] [--retries N] [--retry-delay-ms 500] [--expect TEXT]`:
//!   an HTTP client that succeeds only on status 200 (and the expected text).
//! - `resolve NAME`: prints the name's A records.
//!
//! Names are resolved by the program's own DNS client with `/etc/resolv.conf`
//! semantics (nameservers, search list, `ndots`), never by `getaddrinfo`: NSS
//! does not work reliably in a static glibc binary. `$CAIRN_RESOLV_CONF` points
//! it at another file (for tests).
//!
//! Not for: HTTPS, IPv6 destinations, or anything beyond what cairn's tests ask
//! of a workload.

#![forbid(unsafe_code)]

mod args;
mod client;
mod dns;
mod http;
mod serve;

use std::process::ExitCode;

use args::Command;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let command = match args::parse(&argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-webtest: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{}", args::USAGE);
            Ok(())
        }
        Command::Version => {
            println!("cairn-webtest v{}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(opts) => serve::run(&opts),
        Command::Get(opts) => client::get(&opts),
        Command::Resolve { name } => client::resolve(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-webtest: {e}");
            ExitCode::from(1)
        }
    }
}
