//! Console logging: every line goes to PID 1's stdout/stderr (the kernel console)
//! as `[uptime] LEVEL message key=value ...`, plain text so that both a person on
//! the serial console and the test harness (which parses the `key=value` fields)
//! can read it.

use std::fmt;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Seconds since boot (CLOCK_BOOTTIME), like the kernel's own timestamps.
struct Uptime;

impl FormatTime for Uptime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let t = uptime();
        write!(w, "[{:>5}.{:03}]", t.as_secs(), t.subsec_millis())
    }
}

pub fn uptime() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_timer(Uptime)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}
