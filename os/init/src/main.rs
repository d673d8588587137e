//! `cairn-init`: PID 1 of a cairn node.
//!
//! The same binary runs twice as PID 1. First from the initramfs ("stage 1"): it
//! mounts the kernel filesystems, loads the modules needed to see the disk, finds
//! the active system slot by its GPT label, mounts the squashfs root and switches
//! to it, then execs itself from the new root. There ("system stage") it prepares
//! the machine (cgroup2, shared mounts, the STATE and DATA partitions, identity,
//! network, sysctls), supervises the services, and owns every signal and every
//! child until an orderly shutdown ends in reboot(2).
//!
//! PID 1 must never exit: an error that stops the boot, a panic, and the failure
//! of a long-lived task (see [`tasks`]) end in [`fatal::halt`], which shows the
//! reason on the console and reboots after a countdown (or holds, for debugging).
//! Errors that leave the node useful (a service that will not start, a network
//! that is not there yet) are reported and retried instead.

#[cfg(feature = "bench-plain")]
mod bench;
mod block;
mod cmdline;
mod config;
mod console;
mod fatal;
mod fsutil;
mod gpt_grow;
mod kmod;
mod net;
mod node;
mod power;
mod shutdown;
mod stage1;
mod system;
mod tasks;

use std::panic::AssertUnwindSafe;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("modprobe"))
    {
        std::process::exit(kmod::modprobe_main(&argv[1..]));
    }
    console::init();
    let is_pid1 = std::process::id() == 1;
    if !is_pid1 {
        eprintln!("cairn-init: must run as PID 1 (it is the init of a cairn node)");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(event = "panic", "cairn-init panicked: {info}");
    }));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if stage1::is_initramfs() {
            stage1::run()
        } else {
            system::run()
        }
    }));
    let reason = match result {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "cairn-init panicked (see the message above)".to_string(),
    };
    fatal::halt(&reason);
}
