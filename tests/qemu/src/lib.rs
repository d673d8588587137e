//! Boots cairn disk images under QEMU (TCG) and watches their console for structured events.
//!
//! * [`Disk`] is a qcow2 overlay over a base image plus its own OVMF variable
//!   store, kept in a temporary directory; it survives several boots of the
//!   same machine (reboot and power-cut tests).
//! * [`Vm`] is one running QEMU process. Its serial console is read by a
//!   thread into a list of [`ConsoleLine`]s (with arrival times and parsed
//!   `key=value` fields), teed to `<dir>/console-<n>.log` and, with
//!   `CAIRN_QEMU_ECHO=1`, to stderr. QMP is reached over a unix socket.
//!
//! Environment:
//! * `CAIRN_QEMU_ECHO=1`: copy the console to stderr as it arrives.
//! * `CAIRN_QEMU_KEEP=1`: keep the disk/run directories (overlay, console
//!   logs, qemu stderr) after the test; their path is printed on stderr.
//! * `CAIRN_QEMU_BIN`, `CAIRN_QEMU_IMG`: override the `qemu-system-x86_64` /
//!   `qemu-img` binaries.

#![forbid(unsafe_code)]

mod fields;

pub use fields::{parse_fields, strip_ansi};
pub use regex::Regex;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

/// How many console lines error messages carry.
pub const TAIL_LINES: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
    #[error("qemu failed to start: {0}")]
    Start(String),
    #[error(
        "timed out after {after:?} waiting for {what} ({lines} console lines seen; console log {log})\n--- last {TAIL_LINES} console lines ---\n{tail}"
    )]
    Timeout {
        what: String,
        after: Duration,
        lines: usize,
        log: String,
        tail: String,
    },
    #[error(
        "qemu's console closed (qemu exited) after {after:?} while waiting for {what} ({lines} console lines seen; console log {log})\n--- last {TAIL_LINES} console lines ---\n{tail}"
    )]
    Exited {
        what: String,
        after: Duration,
        lines: usize,
        log: String,
        tail: String,
    },
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
    #[error("qemu did not exit within {after:?}\n--- last {TAIL_LINES} console lines ---\n{tail}")]
    NoExit { after: Duration, tail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

fn qemu_bin() -> String {
    std::env::var("CAIRN_QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".to_owned())
}

fn qemu_img_bin() -> String {
    std::env::var("CAIRN_QEMU_IMG").unwrap_or_else(|_| "qemu-img".to_owned())
}

/// A temporary directory, kept (and announced on stderr) with `CAIRN_QEMU_KEEP=1`.
fn run_dir(prefix: &str) -> Result<TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io_err("creating temporary directory"))?;
    if env_flag("CAIRN_QEMU_KEEP") {
        dir.disable_cleanup(true);
        eprintln!("cairn-qemu: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// A free TCP port on 127.0.0.1 (bound and released; a race with other
/// processes is possible, [`Vm::boot`] retries when QEMU cannot bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Whether `qemu-system-x86_64` and `qemu-img` can be run.
pub fn qemu_available() -> bool {
    let runs = |bin: String| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    runs(qemu_bin()) && runs(qemu_img_bin())
}

/// Whether the default OVMF firmware files exist.
pub fn ovmf_available() -> bool {
    let cfg = VmConfig::default();
    cfg.ovmf_code.is_file() && cfg.ovmf_vars_template.is_file()
}

/// Escapes a value for a QEMU `-opt key=value,...` list (commas are doubled).
fn qopt(s: impl AsRef<str>) -> String {
    s.as_ref().replace(',', ",,")
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Where the guest reaches the host's [`VmConfig::guest_forwards`]. Not 10.0.2.2
/// (QEMU's host address, which `guestfwd` refuses): the next free user-net address.
pub const GUEST_FORWARD_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 100);

/// One [`VmConfig::guest_forwards`] entry.
#[derive(Debug, Clone)]
pub struct GuestForward {
    /// The host port on 127.0.0.1, also the port the guest connects to.
    pub port: u16,
    /// The relay program, run as `relay 127.0.0.1:<port>` with the guest's
    /// connection on its stdin, stdout and stderr (tests/e2e's `cairn-guest-relay`).
    pub relay: PathBuf,
}

/// Direct kernel boot (`-kernel/-initrd/-append`), e.g. for tests that need no
/// disk image.
#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Base image (qcow2) the [`Disk`] overlays; never modified. Informational
    /// for [`Vm::boot`], which uses the given `Disk` (see [`Disk::for_config`]).
    pub disk: PathBuf,
    /// Virtual size of the overlay, e.g. "4G" (the init grows DATA into it).
    pub disk_size: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `-fw_cfg name=<name>,file=<path>` entries; names must start with `opt/`
    /// (cairn uses `opt/cairn/...`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Guest TCP ports forwarded from free 127.0.0.1 ports (see [`Vm::host_port`]).
    pub forwards: Vec<u16>,
    /// The other way: a guest connecting to [`GUEST_FORWARD_ADDR`]`:<port>` gets a
    /// connection to 127.0.0.1:`<port>` on the host (QEMU `guestfwd`, one relay
    /// process per connection; the NIC stays `restrict=on`, so the guest reaches
    /// nothing else). `relay` is the `cairn-guest-relay` program (tests/e2e).
    pub guest_forwards: Vec<GuestForward>,
    pub extra_args: Vec<String>,
    pub ovmf_code: PathBuf,
    pub ovmf_vars_template: PathBuf,
    /// Boot through OVMF (pflash). `false` uses QEMU's default BIOS, which is
    /// much faster for [`DirectKernel`] boots.
    pub uefi: bool,
    /// Boot a kernel directly instead of from the disk.
    pub kernel: Option<DirectKernel>,
    /// Attach the user-mode NIC (`restrict=on`). Forwards need it.
    pub network: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            disk: PathBuf::new(),
            disk_size: None,
            memory_mib: 2048,
            cpus: 2,
            fw_cfg: Vec::new(),
            forwards: Vec::new(),
            guest_forwards: Vec::new(),
            extra_args: Vec::new(),
            ovmf_code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            ovmf_vars_template: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
            uefi: true,
            kernel: None,
            network: true,
        }
    }
}

/// A qcow2 overlay over a base image plus its own OVMF vars copy, in a
/// temporary directory that also receives console logs of each boot.
#[derive(Debug)]
pub struct Disk {
    dir: TempDir,
    overlay: PathBuf,
    vars: PathBuf,
    boots: AtomicU32,
}

impl Disk {
    /// `qemu-img create -f qcow2 -b <base> -F qcow2 <dir>/overlay.qcow2 [size]`.
    pub fn new(base: &Path, size: Option<&str>) -> Result<Disk> {
        let base = base
            .canonicalize()
            .map_err(io_err(format!("base image {}", base.display())))?;
        let args = [
            "-b".to_owned(),
            path_str(&base),
            "-F".to_owned(),
            "qcow2".to_owned(),
        ];
        Self::create(&args, size)
    }

    /// Uses `cfg.disk` and `cfg.disk_size`.
    pub fn for_config(cfg: &VmConfig) -> Result<Disk> {
        Disk::new(&cfg.disk, cfg.disk_size.as_deref())
    }

    /// An empty qcow2 disk of the given size (no backing file).
    pub fn blank(size: &str) -> Result<Disk> {
        Self::create(&[], Some(size))
    }

    fn create(backing: &[String], size: Option<&str>) -> Result<Disk> {
        let dir = run_dir("cairn-qemu-")?;
        let overlay = dir.path().join("overlay.qcow2");
        let mut cmd = Command::new(qemu_img_bin());
        cmd.args(["create", "-q", "-f", "qcow2"])
            .args(backing.iter())
            .arg(&overlay);
        if let Some(size) = size {
            cmd.arg(size);
        }
        let out = cmd.output().map_err(io_err("running qemu-img"))?;
        if !out.status.success() {
            return Err(Error::QemuImg(format!(
                "{:?}: {}: {}",
                cmd,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let disk = Disk {
            vars: dir.path().join("OVMF_VARS.fd"),
            dir,
            overlay,
            boots: AtomicU32::new(0),
        };
        Ok(disk)
    }

    pub fn overlay(&self) -> &Path {
        &self.overlay
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// This machine's OVMF variable store (copied from the template at first boot).
    pub fn ovmf_vars(&self) -> &Path {
        &self.vars
    }

    /// How many times a [`Vm`] was booted from this disk.
    pub fn boots(&self) -> u32 {
        self.boots.load(Ordering::SeqCst)
    }
}

/// One complete console line (terminated by `\n`). `text` has ANSI escape
/// sequences and the trailing `\r` removed.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub text: String,
    pub at: Instant,
    pub fields: BTreeMap<String, String>,
    /// Position in the VM's line list (0-based; across guest reboots).
    pub index: usize,
}

impl ConsoleLine {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn event(&self) -> Option<&str> {
        self.field("event")
    }
}

#[derive(Default)]
struct ConsoleState {
    raw: Vec<u8>,
    lines: Vec<ConsoleLine>,
    partial: Vec<u8>,
    closed: bool,
}

impl ConsoleState {
    fn push_line(&mut self, bytes: &[u8], at: Instant) {
        let text = String::from_utf8_lossy(bytes);
        let text = strip_ansi(text.trim_end_matches(['\r', '\n']));
        let text = text.trim_end_matches('\r').to_owned();
        let fields = parse_fields(&text);
        let index = self.lines.len();
        self.lines.push(ConsoleLine {
            text,
            at,
            fields,
            index,
        });
    }

    fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        let mut s = String::new();
        for l in &self.lines[start..] {
            s.push_str(&l.text);
            s.push('\n');
        }
        if !self.partial.is_empty() {
            let p = String::from_utf8_lossy(&self.partial);
            s.push_str(&strip_ansi(&p));
            s.push_str("⏎(no newline yet)\n");
        }
        s
    }
}

struct Console {
    state: Mutex<ConsoleState>,
    cond: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reader_thread(mut out: impl Read, console: Arc<Console>, mut log: Option<File>, echo: bool) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let at = Instant::now();
        let chunk = &buf[..n];
        if let Some(f) = log.as_mut()
            && f.write_all(chunk).is_err()
        {
            log = None;
        }
        if echo {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(chunk);
            let _ = e.flush();
        }
        let mut st = console.lock();
        st.raw.extend_from_slice(chunk);
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut st.partial);
                st.push_line(&line, at);
            } else {
                st.partial.push(b);
            }
        }
        drop(st);
        console.cond.notify_all();
    }
    let mut st = console.lock();
    if !st.partial.is_empty() {
        let line = std::mem::take(&mut st.partial);
        st.push_line(&line, Instant::now());
    }
    st.closed = true;
    drop(st);
    console.cond.notify_all();
}

/// A running QEMU. Dropping it kills and reaps the process.
pub struct Vm {
    child: Child,
    pid: u32,
    exit: Option<ExitStatus>,
    stdin: Mutex<Option<ChildStdin>>,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    cursor: Mutex<usize>,
    started: Instant,
    ports: BTreeMap<u16, u16>,
    qmp_path: PathBuf,
    qmp_lock: Mutex<()>,
    console_log: PathBuf,
    stderr_log: PathBuf,
    _own_dir: Option<TempDir>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.pid)
            .field("ports", &self.ports)
            .field("console_log", &self.console_log)
            .finish_non_exhaustive()
    }
}

const START_ATTEMPTS: u32 = 3;
const QMP_START_TIMEOUT: Duration = Duration::from_secs(30);

impl Vm {
    /// Boots `disk` (a virtio-blk drive) with `cfg`. Returns once QEMU has
    /// finished initialising (QMP answers); the guest is then running.
    pub fn boot(cfg: &VmConfig, disk: &Disk) -> Result<Vm> {
        Self::start(cfg, Some(disk))
    }

    /// Boots without a disk (e.g. a [`DirectKernel`] boot); logs go to a
    /// directory owned by the `Vm`.
    pub fn boot_without_disk(cfg: &VmConfig) -> Result<Vm> {
        Self::start(cfg, None)
    }

    fn start(cfg: &VmConfig, disk: Option<&Disk>) -> Result<Vm> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::spawn_once(cfg, disk) {
                Ok(vm) => return Ok(vm),
                Err((e, retry)) => {
                    if !retry {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Start("no attempt made".to_owned())))
    }

    /// Returns (error, whether a retry with fresh ports may help).
    fn spawn_once(cfg: &VmConfig, disk: Option<&Disk>) -> Result<Vm, (Error, bool)> {
        let fatal = |e: Error| (e, false);
        let own_dir = match disk {
            Some(_) => None,
            None => Some(run_dir("cairn-qemu-run-").map_err(fatal)?),
        };
        let dir: PathBuf = match (disk, &own_dir) {
            (Some(d), _) => d.dir().to_owned(),
            (None, Some(d)) => d.path().to_owned(),
            (None, None) => unreachable!(),
        };
        let n = disk
            .map(|d| d.boots.fetch_add(1, Ordering::SeqCst) + 1)
            .unwrap_or(1);

        let console_log = dir.join(format!("console-{n}.log"));
        let stderr_log = dir.join(format!("qemu-stderr-{n}.log"));
        let qmp_path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_path);

        let mut cmd = Command::new(qemu_bin());
        // `-cpu max` gives the guest RDRAND and a virtio RNG feeds it too, so the
        // kernel's random pool is ready at once (mke2fs and TLS block on it otherwise).
        cmd.args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-device",
            "virtio-rng-pci",
        ]);
        cmd.args([
            "-m",
            &cfg.memory_mib.to_string(),
            "-smp",
            &cfg.cpus.to_string(),
        ]);
        cmd.args([
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-parallel",
            "none",
        ]);
        cmd.args([
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ]);
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            qopt(path_str(&qmp_path))
        ));

        if cfg.uefi {
            let vars = match disk {
                Some(d) => d.vars.clone(),
                None => dir.join("OVMF_VARS.fd"),
            };
            if !vars.exists() {
                std::fs::copy(&cfg.ovmf_vars_template, &vars)
                    .map_err(io_err(format!(
                        "copying OVMF vars template {}",
                        cfg.ovmf_vars_template.display()
                    )))
                    .map_err(fatal)?;
            }
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qopt(path_str(&cfg.ovmf_code))
            ));
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                qopt(path_str(&vars))
            ));
        }
        if let Some(d) = disk {
            cmd.arg("-drive").arg(format!(
                "if=none,id=disk0,format=qcow2,file={}",
                qopt(path_str(&d.overlay))
            ));
            cmd.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]);
        }
        if let Some(k) = &cfg.kernel {
            cmd.arg("-kernel").arg(&k.kernel);
            if let Some(initrd) = &k.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            cmd.arg("-append").arg(&k.cmdline);
        }
        for (name, file) in &cfg.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name={},file={}", qopt(name), qopt(path_str(file))));
        }
        let mut ports = BTreeMap::new();
        if cfg.network {
            let mut nic = "user,model=virtio-net-pci,restrict=on".to_owned();
            for &guest in &cfg.forwards {
                let host = *ports.entry(guest).or_insert_with(free_port);
                nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            for f in &cfg.guest_forwards {
                // QEMU starts `cmd:` for each connection, the connection on its stdio.
                nic.push_str(&format!(
                    ",guestfwd=tcp:{GUEST_FORWARD_ADDR}:{port}-cmd:{relay} 127.0.0.1:{port}",
                    port = f.port,
                    relay = qopt(path_str(&f.relay)),
                ));
            }
            cmd.arg("-nic").arg(nic);
        } else {
            cmd.args(["-nic", "none"]);
        }
        cmd.args(&cfg.extra_args);

        let stderr_file = File::create(&stderr_log)
            .map_err(io_err(format!("creating {}", stderr_log.display())))
            .map_err(fatal)?;
        let log_file = File::create(&console_log)
            .map_err(io_err(format!("creating {}", console_log.display())))
            .map_err(fatal)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));

        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", qemu_bin())))
            .map_err(fatal)?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let console = Arc::new(Console {
            state: Mutex::new(ConsoleState::default()),
            cond: Condvar::new(),
        });
        let reader = stdout.map(|out| {
            let console = console.clone();
            let echo = env_flag("CAIRN_QEMU_ECHO");
            std::thread::Builder::new()
                .name(format!("qemu-console-{pid}"))
                .spawn(move || reader_thread(out, console, Some(log_file), echo))
                .expect("spawning console reader thread")
        });

        let mut vm = Vm {
            child,
            pid,
            exit: None,
            stdin: Mutex::new(stdin),
            console,
            reader,
            cursor: Mutex::new(0),
            started,
            ports,
            qmp_path,
            qmp_lock: Mutex::new(()),
            console_log,
            stderr_log,
            _own_dir: own_dir,
        };

        // QEMU accepts QMP connections only from its main loop, i.e. after it
        // has set up every device and backend (including host forwards).
        match vm.qmp_with_deadline("query-status", Value::Null, QMP_START_TIMEOUT) {
            Ok(_) => Ok(vm),
            Err(e) => {
                vm.kill();
                let stderr = std::fs::read_to_string(&vm.stderr_log).unwrap_or_default();
                let retry = stderr.contains("hostfwd") || stderr.contains("host forwarding");
                let msg = format!(
                    "{:?}\nQMP check: {e}\n--- qemu stderr ---\n{}\n--- console ---\n{}",
                    cmd,
                    stderr.trim(),
                    vm.console_tail(TAIL_LINES)
                );
                Err((Error::Start(msg), retry))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The 127.0.0.1 port forwarded to `guest_port`. Panics if `guest_port`
    /// was not in [`VmConfig::forwards`].
    pub fn host_port(&self, guest_port: u16) -> u16 {
        match self.ports.get(&guest_port) {
            Some(&p) => p,
            None => panic!(
                "guest port {guest_port} is not forwarded (VmConfig::forwards = {:?})",
                self.ports.keys().collect::<Vec<_>>()
            ),
        }
    }

    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    pub fn stderr_log_path(&self) -> &Path {
        &self.stderr_log
    }

    /// Waits for the next console line (from the cursor on) matching `re`.
    /// The cursor moves past the match; on failure it is left unchanged.
    pub fn wait_for_line(&self, re: &Regex, timeout: Duration) -> Result<ConsoleLine> {
        self.wait_for_match(
            &format!("a console line matching /{}/", re.as_str()),
            timeout,
            |l| re.is_match(&l.text),
        )
    }

    /// Waits for the next line whose fields hold `event=<event>` and every
    /// `(key, value)` pair of `fields`.
    pub fn wait_for_event(
        &self,
        event: &str,
        fields: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<ConsoleLine> {
        let mut what = format!("event={event}");
        for (k, v) in fields {
            what.push_str(&format!(" {k}={v}"));
        }
        self.wait_for_match(
            &format!("a console line with fields {{{what}}}"),
            timeout,
            |l| {
                l.fields.get("event").map(String::as_str) == Some(event)
                    && fields
                        .iter()
                        .all(|(k, v)| l.fields.get(*k).map(String::as_str) == Some(*v))
            },
        )
    }

    /// Waits for the next line (from the cursor on) satisfying `pred`;
    /// `what` describes it in errors.
    pub fn wait_for_match(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&ConsoleLine) -> bool,
    ) -> Result<ConsoleLine> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.console.lock();
        let mut pos = *cursor;
        loop {
            while pos < st.lines.len() {
                let line = &st.lines[pos];
                pos += 1;
                if pred(line) {
                    *cursor = pos;
                    return Ok(line.clone());
                }
            }
            let now = Instant::now();
            if st.closed {
                return Err(Error::Exited {
                    what: what.to_owned(),
                    after: now - t0,
                    lines: st.lines.len(),
                    log: self.console_log.display().to_string(),
                    tail: st.tail(TAIL_LINES),
                });
            }
            if now >= deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                    lines: st.lines.len(),
                    log: self.console_log.display().to_string(),
                    tail: st.tail(TAIL_LINES),
                });
            }
            st = self
                .console
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Index of the next line waits will look at.
    pub fn cursor(&self) -> usize {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the cursor (0 = search the whole console again).
    pub fn set_cursor(&self, index: usize) {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Moves the cursor past every line received so far (e.g. before a
    /// reboot, so the previous boot's events do not match).
    pub fn skip_to_end(&self) {
        let n = self.console.lock().lines.len();
        self.set_cursor(n);
    }

    /// All complete lines received so far.
    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.console.lock().lines.clone()
    }

    /// The whole console output so far, as received (escape sequences kept).
    pub fn console_raw(&self) -> Vec<u8> {
        self.console.lock().raw.clone()
    }

    /// The last `n` lines (plus an unterminated last line, if any).
    pub fn console_tail(&self, n: usize) -> String {
        self.console.lock().tail(n)
    }

    /// Time from the QEMU spawn to the arrival of `line`.
    pub fn since_start(&self, line: &ConsoleLine) -> Duration {
        line.at.saturating_duration_since(self.started)
    }

    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Writes bytes to the serial console (guest input).
    pub fn send_console(&self, bytes: &[u8]) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        match stdin.as_mut() {
            Some(s) => s
                .write_all(bytes)
                .and_then(|_| s.flush())
                .map_err(io_err("writing to the serial console")),
            None => Err(Error::Io {
                context: "writing to the serial console".to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            }),
        }
    }

    /// Runs one QMP command on a fresh connection (greeting,
    /// `qmp_capabilities`, command) and returns its `return` value.
    /// `args` of `Value::Null` sends no `arguments`.
    pub fn qmp(&self, command: &str, args: Value) -> Result<Value> {
        self.qmp_with_deadline(command, args, Duration::from_secs(10))
    }

    fn qmp_with_deadline(
        &self,
        command: &str,
        args: Value,
        connect_timeout: Duration,
    ) -> Result<Value> {
        let _guard = self.qmp_lock.lock().unwrap_or_else(|e| e.into_inner());
        let qerr = |message: String| Error::Qmp {
            command: command.to_owned(),
            message,
        };
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            match UnixStream::connect(&self.qmp_path) {
                Ok(s) => break s,
                Err(e) => {
                    if self.console.lock().closed {
                        return Err(qerr(format!("qemu has exited ({e})")));
                    }
                    if Instant::now() >= deadline {
                        return Err(qerr(format!(
                            "cannot connect to {} within {connect_timeout:?}: {e}",
                            self.qmp_path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let timeout = Some(Duration::from_secs(30));
        stream
            .set_read_timeout(timeout)
            .map_err(io_err("QMP socket"))?;
        stream
            .set_write_timeout(timeout)
            .map_err(io_err("QMP socket"))?;
        let mut writer = stream.try_clone().map_err(io_err("QMP socket"))?;
        let mut reader = BufReader::new(stream);

        let read_msg = |reader: &mut BufReader<UnixStream>| -> Result<Value> {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| qerr(format!("reading: {e}")))?;
            if n == 0 {
                return Err(qerr("connection closed".to_owned()));
            }
            serde_json::from_str(&line).map_err(|e| qerr(format!("bad JSON {line:?}: {e}")))
        };
        let greeting = read_msg(&mut reader)?;
        if greeting.get("QMP").is_none() {
            return Err(qerr(format!("unexpected greeting {greeting}")));
        }
        let mut exec = |cmd: &str, args: &Value| -> Result<Value> {
            let mut msg = json!({ "execute": cmd });
            if !args.is_null() {
                msg["arguments"] = args.clone();
            }
            let mut text = msg.to_string();
            text.push('\n');
            writer
                .write_all(text.as_bytes())
                .map_err(|e| qerr(format!("writing {cmd}: {e}")))?;
            loop {
                let resp = read_msg(&mut reader)?;
                if let Some(r) = resp.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = resp.get("error") {
                    return Err(qerr(format!("{cmd} failed: {e}")));
                }
                // asynchronous events ({"event": ...}) are skipped
            }
        };
        exec("qmp_capabilities", &Value::Null)?;
        exec(command, &args)
    }

    /// ACPI power button (`system_powerdown`); the guest decides what to do.
    pub fn powerdown(&self) -> Result<()> {
        self.qmp("system_powerdown", Value::Null).map(|_| ())
    }

    /// Sends ctrl-alt-delete on the PS/2 keyboard (`send-key`).
    pub fn ctrl_alt_del(&self) -> Result<()> {
        let keys = json!({ "keys": [
            { "type": "qcode", "data": "ctrl" },
            { "type": "qcode", "data": "alt" },
            { "type": "qcode", "data": "delete" },
        ]});
        self.qmp("send-key", keys).map(|_| ())
    }

    /// Hard reset of the machine (`system_reset`), same QEMU process.
    pub fn reset(&self) -> Result<()> {
        self.qmp("system_reset", Value::Null).map(|_| ())
    }

    /// QMP `quit`: QEMU exits (like pulling the plug, but orderly for QEMU's
    /// own files).
    pub fn quit(&mut self) -> Result<ExitStatus> {
        // the connection may close before the reply arrives
        let _ = self.qmp("quit", Value::Null);
        self.wait_exit(Duration::from_secs(30))
    }

    /// The exit status if QEMU has exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.finish(s);
        }
        self.exit
    }

    /// Waits for QEMU to exit by itself (guest poweroff, or a panic with
    /// `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(Error::NoExit {
                    after: timeout,
                    tail: self.console_tail(TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        *self.stdin.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // QEMU is gone, so its stdout is at EOF: the reader ends promptly.
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }

    /// Hard power-off: SIGKILL QEMU and reap it.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_some() {
            return;
        }
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.finish(s);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
