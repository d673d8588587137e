//! Runs the built `cairn-webtest`: `serve` and `get` on 127.0.0.1, a graceful
//! SIGTERM/SIGINT that leaves its line in the term file, retries, and `resolve`
//! and `get` by name through a REAL CoreDNS (the pinned v1.14.2 from the
//! component cache) with a Kubernetes-style resolv.conf (search list,
//! `ndots:5`). One test does the same with the static build, the one the
//! image carries.
//!
//! CoreDNS needs the component cache warm (`cargo run --release -p cairn-image
//! -- components build`); on a cold cache those tests fail with that
//! instruction, they never pass vacuously. CoreDNS listens on 127.0.0.1 only,
//! answers authoritatively from a zone file in a temporary directory (the
//! `file` plugin, so unknown names get NXDOMAIN as from the `kubernetes`
//! plugin; `hosts` would answer SERVFAIL), and is killed by its pid in a drop
//! guard.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WEBTEST: &str = env!("CARGO_BIN_EXE_cairn-webtest");

const WARM_HINT: &str = "the real component cache has no CoreDNS v1.14.2: run \
     `cargo run --release -p cairn-image -- components build` first (CI runs it before these tests)";

/// The search list and ndots a pod in namespace `default` gets.
const POD_SEARCH: &str = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                          options ndots:5\n";

/// A child process killed by its pid (SIGKILL) and reaped when dropped, unless
/// it has exited already.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or_else(|e| panic!("{e}")))
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what))
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `serve`, its port (from the start line) and the rest of its stdout.
struct Server {
    proc: Proc,
    port: u16,
    stdout: BufReader<ChildStdout>,
}

/// Starts `<binary> serve --port <port> <extra...>` and waits for its start
/// line, which it prints after its signals are blocked and its socket listens.
fn serve(binary: &Path, port: u16, extra: &[&str]) -> Server {
    let child = Command::new(binary)
        .args(["serve", "--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let mut proc = Proc {
        child,
        what: format!("{} serve", binary.display()),
    };
    let out = proc
        .child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("no stdout pipe"));
    let mut stdout = BufReader::new(out);
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading the start line: {e}"));
    let port = line
        .split("0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in the start line {line:?}"));
    assert!(
        line.contains(&format!("pod={} pid=", hostname())),
        "start line {line:?}"
    );
    Server { proc, port, stdout }
}

/// Runs `<binary> <args>` with `$CAIRN_RESOLV_CONF` set to `resolv` (if any).
fn run(binary: &Path, args: &[&str], resolv: Option<&Path>) -> Output {
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null());
    match resolv {
        Some(path) => cmd.env("CAIRN_RESOLV_CONF", path),
        None => cmd.env_remove("CAIRN_RESOLV_CONF"),
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", binary.display()))
}

/// Asserts success and returns stdout.
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit code 1 and returns stderr.
fn fails(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} did not fail with 1:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The kernel's hostname, read independently of the program.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|e| panic!("reading /proc/sys/kernel/hostname: {e}"))
        .trim_end()
        .to_string()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cairn-webtest-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"))
}

/// A loopback port free for both TCP and UDP at the time of asking.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("{e}"));
        let port = tcp.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

#[test]
fn serve_answers_get_on_loopback() {
    let bin = Path::new(WEBTEST);
    let server = serve(bin, 0, &[]);
    let base = format!("http://127.0.0.1:{}", server.port);

    let root = run(bin, &["get", &format!("{base}/")], None);
    assert_eq!(ok(&root, "get /"), format!("{}\n", hostname()));
    let health = run(
        bin,
        &["get", &format!("{base}/healthz"), "--expect", "ok"],
        None,
    );
    assert_eq!(ok(&health, "get /healthz"), "ok\n");

    // A connection that never sends its request holds one thread, not the server.
    let idle = TcpStream::connect(("127.0.0.1", server.port)).unwrap_or_else(|e| panic!("{e}"));
    let again = run(bin, &["get", &format!("{base}/"), "--timeout-s", "3"], None);
    ok(&again, "get / beside an idle connection");
    drop(idle);

    let missing = fails(
        &run(bin, &["get", &format!("{base}/nope")], None),
        "get /nope",
    );
    assert!(
        missing.contains(&format!(
            "GET /nope from 127.0.0.1:{}: status 404",
            server.port
        )),
        "{missing}"
    );
    let unexpected = fails(
        &run(
            bin,
            &["get", &format!("{base}/"), "--expect", "nginx"],
            None,
        ),
        "get --expect nginx",
    );
    assert!(
        unexpected.contains("status 200 but the body does not contain \"nginx\""),
        "{unexpected}"
    );
    let https = fails(&run(bin, &["get", "https://127.0.0.1/"], None), "get https");
    assert!(https.contains("only http:// URLs"), "{https}");
}

#[test]
fn sigterm_and_sigint_record_the_termination_and_exit_0() {
    let bin = Path::new(WEBTEST);
    let dir = tempdir();
    let term = dir.path().join("term.log");
    let term_arg = term.to_string_lossy().into_owned();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();

    for (signal, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGINT, "INT")] {
        let mut server = serve(bin, 0, &["--term-file", &term_arg]);
        kill(server.proc.pid(), signal).unwrap_or_else(|e| panic!("sending {signal}: {e}"));
        let status = server.proc.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "after SIG{name}: {status}");
        let mut rest = String::new();
        let _ = server.stdout.read_to_string(&mut rest);
        assert_eq!(
            rest,
            format!("cairn-webtest: got SIG{name}, recorded in {term_arg}; exiting 0\n")
        );
    }

    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let text = std::fs::read_to_string(&term).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, name) in lines.iter().zip(["TERM", "INT"]) {
        let prefix = format!("graceful-termination pod={} signal={name} at=", hostname());
        let at: u64 = line
            .strip_prefix(&prefix)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("line {line:?} is not {prefix}<seconds>"));
        assert!(
            (before..=after).contains(&at),
            "{line}: not in {before}..={after}"
        );
    }

    // Without --term-file: still a clean exit.
    let mut server = serve(bin, 0, &[]);
    kill(server.proc.pid(), Signal::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        server.proc.wait_exit(Duration::from_secs(5)).code(),
        Some(0)
    );
}

/// As PID 1 of a PID namespace, where the kernel drops a SIGTERM from the
/// parent namespace unless the process takes it (as containerd's shim sends
/// it), the server still records the termination and exits 0.
#[test]
fn sigterm_reaches_serve_as_pid_1_of_a_pid_namespace() {
    let dir = tempdir();
    let term = dir.path().join("term.log");
    let term_arg = term.to_string_lossy().into_owned();
    let mut unshare = Command::new("unshare");
    if !nix::unistd::geteuid().is_root() {
        unshare.args(["--user", "--map-root-user"]);
    }
    let child = unshare
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            WEBTEST,
            "serve",
            "--port",
            "0",
        ])
        .args(["--term-file", &term_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("running unshare (util-linux): {e}"));
    let mut proc = Proc {
        child,
        what: "unshare --pid ... serve".into(),
    };
    let mut stdout = BufReader::new(
        proc.child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("no stdout pipe")),
    );
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading the start line: {e}"));
    assert!(line.ends_with(" pid=1\n"), "not PID 1: {line:?}");
    // The server, as the parent namespace sees it: unshare's only child.
    let children = format!("/proc/{0}/task/{0}/children", proc.child.id());
    let text = std::fs::read_to_string(&children).unwrap_or_else(|e| panic!("{children}: {e}"));
    let server: i32 = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{children} is {text:?}: {e}"));
    kill(Pid::from_raw(server), Signal::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
    let status = proc.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
    let text = std::fs::read_to_string(&term).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.starts_with(&format!(
            "graceful-termination pod={} signal=TERM at=",
            hostname()
        )),
        "{text}"
    );
}

#[test]
fn get_retries_and_names_the_address_it_could_not_reach() {
    let bin = Path::new(WEBTEST);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let refused = fails(
        &run(
            bin,
            &["get", &url, "--retries", "1", "--retry-delay-ms", "50"],
            None,
        ),
        "get with nothing listening",
    );
    assert!(
        refused.contains(&format!(
            "attempt 1 of 2 failed: connecting to 127.0.0.1:{port}"
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!(
            "get {url} (attempt 2 of 2): connecting to 127.0.0.1:{port}"
        )),
        "{refused}"
    );

    // A client that starts before the server gets its answer once it is up.
    let client = Command::new(bin)
        .args(["get", &url, "--retries", "100", "--retry-delay-ms", "50"])
        .env_remove("CAIRN_RESOLV_CONF")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting get: {e}"));
    let mut client = Proc {
        child: client,
        what: "get with retries".into(),
    };
    std::thread::sleep(Duration::from_millis(300));
    let _server = serve(bin, port, &[]);
    let status = client.wait_exit(Duration::from_secs(10));
    let mut out = Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut pipe) = client.child.stdout.take() {
        pipe.read_to_end(&mut out.stdout)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    if let Some(mut pipe) = client.child.stderr.take() {
        pipe.read_to_end(&mut out.stderr)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(ok(&out, "get with retries"), format!("{}\n", hostname()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("attempt 1 of 101 failed"), "{log}");
}

/// A CoreDNS on 127.0.0.1:<port> authoritative for the root zone below; killed
/// by its pid when dropped.
struct CoreDns {
    proc: Proc,
    port: u16,
    log: PathBuf,
}

/// The zone CoreDNS serves: cluster names as a pod would see them, one a CNAME
/// (like an ExternalName Service), one with two addresses.
const ZONE: &str = "$ORIGIN .\n\
    $TTL 30\n\
    @ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30\n\
    @ IN NS ns.dns.cluster.local.\n\
    ns.dns.cluster.local. IN A 127.0.0.1\n\
    web.default.svc.cluster.local. IN A 127.0.0.1\n\
    alias.default.svc.cluster.local. IN CNAME web.default.svc.cluster.local.\n\
    multi.default.svc.cluster.local. IN A 127.0.0.2\n\
    multi.default.svc.cluster.local. IN A 127.0.0.3\n\
    api.kube-system.svc.cluster.local. IN A 127.0.0.4\n";

impl CoreDns {
    fn start(dir: &Path) -> CoreDns {
        let report = cairn_image::components::cached(&["coredns"])
            .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
        let binary = report
            .binary("coredns", "coredns")
            .unwrap_or_else(|e| panic!("{WARM_HINT}: {e}"));
        assert!(
            binary.is_file(),
            "{WARM_HINT}: {} is missing",
            binary.display()
        );

        let zone = dir.join("db.root");
        std::fs::write(&zone, ZONE).unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let corefile = dir.join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                ".:{port} {{\n    bind 127.0.0.1\n    file {} . {{\n        reload 0\n    }}\n    \
                 errors\n    log\n}}\n",
                zone.display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let log = dir.join("coredns.log");
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let log_err = log_file.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(&binary)
            .arg("-conf")
            .arg(&corefile)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut dns = CoreDns {
            proc: Proc {
                child,
                what: "coredns".into(),
            },
            port,
            log,
        };
        dns.wait_ready(Duration::from_secs(30));
        dns
    }

    /// Waits until CoreDNS accepts TCP on its port (it opens UDP first).
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!("coredns exited ({status}); log:\n{}", self.log_text());
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "coredns did not listen on 127.0.0.1:{} within {within:?}; log:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A pod-style resolv.conf in `dir` pointing at this server.
    fn resolv_conf(&self, dir: &Path) -> PathBuf {
        let path = dir.join("resolv.conf");
        let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write!(f, "nameserver 127.0.0.1:{}\n{POD_SEARCH}", self.port)
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }
}

#[test]
fn resolve_and_get_by_name_through_real_coredns() {
    let bin = Path::new(WEBTEST);
    let dir = tempdir();
    let dns = CoreDns::start(dir.path());
    let resolv = dns.resolv_conf(dir.path());
    let server = format!("127.0.0.1:{}", dns.port);
    let resolve = |name: &str| run(bin, &["resolve", name], Some(&resolv));

    // Through the search list: the first, then the second domain.
    assert_eq!(ok(&resolve("web"), "resolve web"), "127.0.0.1\n");
    assert_eq!(
        ok(&resolve("api.kube-system"), "resolve api.kube-system"),
        "127.0.0.4\n"
    );
    // A CNAME to the name with the address.
    assert_eq!(ok(&resolve("alias"), "resolve alias"), "127.0.0.1\n");
    let mut multi: Vec<String> = ok(&resolve("multi"), "resolve multi")
        .lines()
        .map(str::to_string)
        .collect();
    multi.sort();
    assert_eq!(multi, vec!["127.0.0.2", "127.0.0.3"]);
    // Absolute names are not searched.
    assert_eq!(
        ok(
            &resolve("web.default.svc.cluster.local."),
            "resolve absolute"
        ),
        "127.0.0.1\n"
    );
    let absolute = fails(&resolve("web."), "resolve web.");
    assert!(
        absolute.contains("\"web.\"") && absolute.contains(&format!("web: NXDOMAIN from {server}")),
        "{absolute}"
    );
    assert!(
        !absolute.contains("web.default.svc.cluster.local"),
        "{absolute}"
    );
    // A name nowhere: every candidate and the server named.
    let nowhere = fails(&resolve("nowhere"), "resolve nowhere");
    for candidate in [
        "nowhere.default.svc.cluster.local",
        "nowhere.svc.cluster.local",
        "nowhere.cluster.local",
    ] {
        assert!(
            nowhere.contains(&format!("{candidate}: NXDOMAIN from {server}")),
            "{nowhere}"
        );
    }
    assert!(nowhere.contains("; nowhere: NXDOMAIN"), "{nowhere}");
    // A name that exists without an A record (an empty non-terminal).
    let empty = fails(&resolve("svc.cluster.local."), "resolve svc.cluster.local.");
    assert!(
        empty.contains(&format!(
            "svc.cluster.local: no A record (empty answer) from {server}"
        )),
        "{empty}"
    );

    // get by name.
    let web = serve(bin, 0, &[]);
    let url = format!("http://web:{}/", web.port);
    let body = ok(&run(bin, &["get", &url], Some(&resolv)), "get http://web/");
    assert_eq!(body, format!("{}\n", hostname()));
    let unknown = fails(
        &run(
            bin,
            &["get", &format!("http://nowhere:{}/", web.port)],
            Some(&resolv),
        ),
        "get http://nowhere/",
    );
    assert!(unknown.contains("resolving \"nowhere\""), "{unknown}");

    // A nameserver that is not there.
    let dead = dir.path().join("dead.conf");
    std::fs::write(
        &dead,
        format!("nameserver 127.0.0.1:{}\n{POD_SEARCH}", free_port()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = fails(
        &run(bin, &["resolve", "web"], Some(&dead)),
        "resolve with no server",
    );
    assert!(refused.contains("connection refused"), "{refused}");
    drop(dns);
}

/// The static build the image carries resolves and fetches by name too (no
/// NSS or getaddrinfo involved).
#[test]
fn static_build_serves_and_gets_by_name_through_real_coredns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("no workspace root above {}", env!("CARGO_MANIFEST_DIR")));
    let bin = cairn_image::static_bins::build_static(root, "cairn-webtest", "cairn-webtest")
        .unwrap_or_else(|e| panic!("{e}"));
    let needs = cairn_image::elf::needs(&bin).unwrap_or_else(|e| panic!("{e}"));
    assert!(needs.is_static(), "{}: {needs:?}", bin.display());
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or_default();
    eprintln!("static {}: {size} bytes", bin.display());

    let dir = tempdir();
    let dns = CoreDns::start(dir.path());
    let resolv = dns.resolv_conf(dir.path());
    let mut web = serve(&bin, 0, &[]);
    let url = format!("http://web:{}/healthz", web.port);
    let body = ok(
        &run(&bin, &["get", &url, "--expect", "ok"], Some(&resolv)),
        "static get http://web/healthz",
    );
    assert_eq!(body, "ok\n");
    kill(web.proc.pid(), Signal::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(web.proc.wait_exit(Duration::from_secs(5)).code(), Some(0));
}
