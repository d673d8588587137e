//! PID 1's long-lived tokio tasks, watched: none of them may vanish unnoticed.
//!
//! tokio catches a panic inside a spawned task and keeps the runtime going, so
//! without this a panic in the supervisor actor, the network task or the node
//! bring-up would leave PID 1 running without that part of itself. Every task the
//! init spawns for the life of the node goes through [`Tasks`]:
//! - [`Tasks::watch`] with [`Lifetime::Forever`]: must never end; a panic or a
//!   return is a failure (the supervisor actor, the reaper, the control socket);
//! - [`Tasks::until_done`]: may finish; only a panic is a failure;
//! - [`Tasks::restarting`]: safe to run again (it keeps no state a restart could
//!   double); a panic is logged and the task is started afresh after a delay.
//!
//! A failure is sent, as a reason naming the task, to the receiver that
//! [`Tasks::new`] returns; the system stage ends in `fatal::halt` with it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

/// How long a restarting task waits before it is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What ending means for a watched task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Ending at all is a failure.
    Forever,
    /// Returning is fine; a panic is a failure.
    UntilDone,
}

/// Spawns and watches PID 1's tasks. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tasks {
    failures: mpsc::UnboundedSender<String>,
}

impl Tasks {
    /// A new set, and the receiver of the reasons its tasks failed.
    pub fn new() -> (Tasks, mpsc::UnboundedReceiver<String>) {
        let (failures, rx) = mpsc::unbounded_channel();
        (Tasks { failures }, rx)
    }

    /// Spawns `task`, which may finish.
    pub fn until_done(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.watch(name, tokio::spawn(task), Lifetime::UntilDone);
    }

    /// Watches a task that something else spawned (a library's accept loop).
    pub fn watch(&self, name: &'static str, handle: JoinHandle<()>, lifetime: Lifetime) {
        let failures = self.failures.clone();
        tokio::spawn(async move {
            if let Some(reason) = judge(name, handle.await, lifetime) {
                let _ = failures.send(reason);
            }
        });
    }

    /// Runs the task that `start` makes, and starts a new one after a panic; a
    /// return ends it for good.
    pub fn restarting<F, Fut>(&self, name: &'static str, start: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            loop {
                match tokio::spawn(start()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(event = "task_restarted", task = name, error = ?describe(e), delay_ms = RESTART_DELAY.as_millis() as u64, "a PID 1 task failed; starting it again");
                        tokio::time::sleep(RESTART_DELAY).await;
                    }
                }
            }
        });
    }
}

/// The failure, if `result` is one for a task of `lifetime`.
fn judge(name: &str, result: Result<(), JoinError>, lifetime: Lifetime) -> Option<String> {
    match (result, lifetime) {
        (Ok(()), Lifetime::UntilDone) => None,
        (Ok(()), Lifetime::Forever) => Some(format!("PID 1's task `{name}` ended unexpectedly")),
        (Err(e), _) => Some(format!("PID 1's task `{name}` {}", describe(e))),
    }
}

/// "panicked: <message>" or "was cancelled".
fn describe(e: JoinError) -> String {
    if !e.is_panic() {
        return "was cancelled".to_string();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    format!("panicked: {message}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn forever(tasks: &Tasks, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        tasks.watch(name, tokio::spawn(task), Lifetime::Forever);
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a failure is reported")
            .expect("channel open")
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_the_task_and_message() {
        let (tasks, mut failed) = Tasks::new();
        forever(&tasks, "supervisor", async { panic!("actor broke") });
        assert_eq!(
            next(&mut failed).await,
            "PID 1's task `supervisor` panicked: actor broke"
        );
        tasks.until_done("node", async {
            let n = 3;
            panic!("bring-up broke after {n} steps")
        });
        assert_eq!(
            next(&mut failed).await,
            "PID 1's task `node` panicked: bring-up broke after 3 steps"
        );
    }

    #[tokio::test]
    async fn a_forever_task_that_returns_is_reported() {
        let (tasks, mut failed) = Tasks::new();
        forever(&tasks, "reaper", async {});
        assert_eq!(
            next(&mut failed).await,
            "PID 1's task `reaper` ended unexpectedly"
        );
    }

    #[tokio::test]
    async fn a_task_that_may_finish_is_not_reported() {
        let (tasks, mut failed) = Tasks::new();
        tasks.until_done("network", async {});
        tasks.watch("control", tokio::spawn(async {}), Lifetime::UntilDone);
        // A forever task that does fail afterwards is the first thing reported.
        tokio::time::sleep(Duration::from_millis(50)).await;
        forever(&tasks, "marker", async {});
        assert_eq!(
            next(&mut failed).await,
            "PID 1's task `marker` ended unexpectedly"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_runs_again_after_a_panic() {
        let (tasks, mut failed) = Tasks::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        tasks.restarting("milestones", move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("lagged");
                }
            }
        });
        tokio::time::sleep(RESTART_DELAY * 5).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean end"
        );
        assert!(failed.try_recv().is_err(), "a restart is not a failure");
    }
}
