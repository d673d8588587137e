//! The loop: fetch on a timer or a webhook, take a new revision through
//! verify → render → plan → apply → prune → health (→ rollback), revert drift as
//! watch events arrive, and report every step in the status object, Events,
//! logs and metrics. A refused or failed revision never disturbs what runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::engine::{Desired, Engine, EngineError, merged};
use crate::health::Health;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::objects::ObjKey;
use crate::render::{self, RenderOptions};
use crate::source::{Source, SourceError};
use crate::state::{NodeState, StateDir};
use crate::status::{self, SyncStatus};

/// Why a revision was not applied (refused before any write) or failed.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Other(String),
}

impl RevisionError {
    fn kind(&self) -> &'static str {
        match self {
            RevisionError::Source(_) => "source",
            RevisionError::Engine(EngineError::Render(_)) => "render",
            RevisionError::Engine(EngineError::MassDelete { .. }) => "prune",
            RevisionError::Engine(_) => "apply",
            RevisionError::Other(_) => "apply",
        }
    }
}

pub struct Reconciler {
    pub engine: Arc<Engine>,
    pub source: Arc<Mutex<Source>>,
    pub state_dir: StateDir,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub render: RenderOptions,
    node: NodeState,
    inventory: Inventory,
    desired: Option<Desired>,
    status: SyncStatus,
    /// While a new revision waits to become healthy: when it gives up.
    health_deadline: Option<Instant>,
}

/// Runs a blocking git operation off the async threads.
async fn git<T: Send + 'static>(
    source: &Arc<Mutex<Source>>,
    f: impl FnOnce(&mut Source) -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = source.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    })
    .await
    .unwrap_or_else(|e| Err(SourceError::InvalidSpec(format!("git task failed: {e}"))))
}

impl Reconciler {
    pub fn new(
        engine: Arc<Engine>,
        source: Source,
        state_dir: StateDir,
        metrics: Arc<Metrics>,
        interval: Duration,
        identity: &str,
    ) -> Reconciler {
        let url = source.spec().url.clone();
        Reconciler {
            engine,
            source: Arc::new(Mutex::new(source)),
            state_dir,
            metrics,
            interval,
            render: RenderOptions::default(),
            node: NodeState::default(),
            inventory: Inventory::default(),
            desired: None,
            status: SyncStatus {
                url,
                leader: identity.to_string(),
                health: "Unknown".into(),
                ..Default::default()
            },
            health_deadline: None,
        }
    }

    /// Picks up where the last run stopped: the inventory (the cluster's copy
    /// first: another node may have led since) and the applied revision, whose
    /// objects are compared with the cluster, writing only what drifted.
    pub async fn resume(&mut self) -> Result<(), String> {
        self.node = self.state_dir.load()?;
        if let Some(mut kept) = status::fetch(&self.engine.client, &self.engine.name).await {
            // The history and revisions survive a restart; who leads and where from are now.
            kept.url = std::mem::take(&mut self.status.url);
            kept.leader = std::mem::take(&mut self.status.leader);
            self.status = kept;
        }
        let node_copy = Inventory::load(&self.state_dir.inventory())?;
        self.inventory = match Inventory::fetch(&self.engine.client, &self.engine.name).await {
            Ok(Some(inv)) => inv,
            Ok(None) => node_copy,
            Err(e) => {
                tracing::warn!(service = "gitops", error = %crate::cluster::message(&e), "reading the cluster's inventory; using the node's");
                node_copy
            }
        };
        if !self.inventory.revision.is_empty() {
            self.node.applied = Some(self.inventory.revision.clone());
        }
        self.status.applied_revision = self.node.applied.clone().unwrap_or_default();
        self.status.last_healthy_revision = self.node.last_healthy.clone().unwrap_or_default();
        self.status.objects = self.inventory.entries.len() as u64;
        if let Some(rev) = self.node.applied.clone() {
            match self.desired_for(&rev).await {
                Ok(desired) => {
                    let started = Instant::now();
                    match self.engine.apply(&desired, &self.inventory).await {
                        Ok(report) => {
                            tracing::info!(service = "gitops", revision = %rev, written = report.written.len(), unchanged = report.unchanged, ms = started.elapsed().as_millis() as u64, "resumed")
                        }
                        Err((_, e)) => {
                            tracing::warn!(service = "gitops", revision = %rev, error = %e, "resuming: the applied revision did not apply cleanly")
                        }
                    }
                    self.metrics.managed_objects(desired.objects.len() as u64);
                    self.desired = Some(desired);
                }
                Err(e) => {
                    tracing::warn!(service = "gitops", revision = %rev, error = %e, "resuming: the applied revision is not readable from the mirror")
                }
            }
        }
        self.publish().await;
        Ok(())
    }

    /// Files → objects → plan, for a revision already in the mirror.
    async fn desired_for(&self, revision: &str) -> Result<Desired, RevisionError> {
        let rev = revision.to_string();
        let files = git(&self.source, move |s| s.files(&rev)).await?;
        let objects = render::render(&files, &self.render).map_err(EngineError::from)?;
        Ok(self.engine.plan(revision, objects)?)
    }

    async fn publish(&mut self) {
        if let Err(e) = status::publish(&self.engine.client, &self.engine.name, &self.status).await
        {
            tracing::warn!(service = "gitops", error = %crate::cluster::message(&e), "writing the status object");
        }
    }

    /// The loop; returns only if `stop` resolves.
    pub async fn run(
        mut self,
        trigger: Arc<Notify>,
        mut drift: mpsc::UnboundedReceiver<ObjKey>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut next_fetch = tokio::time::Instant::now();
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut requests = status::watch_requests(&self.engine.client, &self.engine.name);
        let mut sync_requested = None;
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = trigger.notified() => next_fetch = tokio::time::Instant::now(),
                Ok(()) = requests.changed() => {
                    let r = requests.borrow_and_update().clone();
                    if r.suspend != self.status.suspended {
                        tracing::info!(service = "gitops", suspended = r.suspend, "suspend changed by the status object's spec");
                        self.status.suspended = r.suspend;
                        self.publish().await;
                        next_fetch = tokio::time::Instant::now(); // on resume: catch up at once
                    }
                    if r.sync_requested != sync_requested {
                        tracing::info!(service = "gitops", "sync requested");
                        next_fetch = tokio::time::Instant::now();
                        sync_requested = r.sync_requested;
                    }
                }
                () = tokio::time::sleep_until(next_fetch), if !self.status.suspended => {
                    let started = Instant::now();
                    match git(&self.source, |s| s.fetch()).await {
                        Ok(head) => {
                            failures = 0;
                            next_fetch = tokio::time::Instant::now() + self.interval;
                            self.take(head, started).await;
                        }
                        Err(e) => {
                            failures += 1;
                            let backoff = Duration::from_secs(1 << failures.min(6)).min(self.interval);
                            next_fetch = tokio::time::Instant::now() + backoff;
                            tracing::warn!(service = "gitops", error = %e, retry_in_s = backoff.as_secs(), "fetch failed; the last applied revision keeps running");
                            self.metrics.error("source");
                            let message = e.to_string();
                            if self.status.last_error != message {
                                self.status.last_error = message;
                                self.publish().await;
                            }
                        }
                    }
                }
                Some(key) = drift.recv() => if !self.status.suspended { self.drifted(key).await },
                _ = tick.tick(), if self.health_deadline.is_some() => self.check_health().await,
            }
        }
    }

    async fn drifted(&mut self, key: ObjKey) {
        let Some(desired) = &self.desired else { return };
        if let Err(e) = self.engine.correct_drift(desired, &key).await {
            tracing::warn!(service = "gitops", object = %key, error = %e, "reverting drift failed");
            self.metrics.error("apply");
        }
    }

    /// A fetched head: apply it if it is new, else compare the applied one with
    /// the cluster (a safety net beside the watches; no writes when in sync).
    async fn take(&mut self, head: String, started: Instant) {
        if self.status.seen_revision != head {
            self.status.seen_revision = head.clone();
            self.publish().await;
        }
        if self.node.applied.as_deref() == Some(head.as_str()) {
            if let Some(desired) = &self.desired {
                let compared = Instant::now();
                match self.engine.apply(desired, &self.inventory).await {
                    Ok(r) if r.written.is_empty() => {
                        tracing::info!(service = "gitops", revision = %head, unchanged = r.unchanged, ms = compared.elapsed().as_millis() as u64, "in sync")
                    }
                    Ok(r) => {
                        tracing::info!(service = "gitops", revision = %head, written = r.written.len(), unchanged = r.unchanged, ms = compared.elapsed().as_millis() as u64, "drifted objects re-applied")
                    }
                    Err((_, e)) => {
                        tracing::warn!(service = "gitops", error = %e, "re-applying drifted objects")
                    }
                }
                // A revision that failed its health check with nothing to roll back
                // to stays applied; it is healthy once its objects get there (a slow
                // first boot, an image that arrived later).
                if self.health_deadline.is_none()
                    && self.status.health != "Healthy"
                    && self.engine.health(desired) == Health::Healthy
                {
                    self.mark_healthy(head).await;
                }
            }
            return;
        }
        if self.node.failed.contains(&head) {
            return; // reported when it failed; waits for a new commit
        }
        let result = self.apply_revision(&head, true).await;
        self.finish(&head, started, result, false).await;
    }

    /// Everything up to and including the prune; on success the revision is the
    /// applied one and its health is awaited.
    async fn apply_revision(&mut self, head: &str, verify: bool) -> Result<(), RevisionError> {
        if verify {
            let (last, new) = (self.node.applied.clone(), head.to_string());
            git(&self.source, move |s| s.verify(last.as_deref(), &new)).await?;
        }
        let desired = self.desired_for(head).await?;
        let allowance = status::mass_prune_allowance(&self.engine.client, &self.engine.name).await;
        let gone = self
            .engine
            .prune_plan(&desired, &self.inventory, allowance.as_deref())?;
        let report = match self.engine.apply(&desired, &self.inventory).await {
            Ok(r) => r,
            Err((partial, e)) => {
                // Keep everything written so far in the inventory, so nothing is orphaned.
                self.inventory = merged(&self.inventory, &desired, &partial.written);
                self.save_inventory().await;
                return Err(e.into());
            }
        };
        let (pruned, kept) = self.engine.prune(&gone).await;
        let mut inventory = desired.inventory();
        inventory.entries.extend(kept);
        self.inventory = inventory;
        self.save_inventory().await;
        let rev = head.to_string();
        if let Err(e) = git(&self.source, move |s| s.pin(&rev, "applied")).await {
            tracing::warn!(service = "gitops", error = %e, "pinning the applied revision");
        }
        self.node.applied = Some(head.to_string());
        self.save_node();
        self.metrics.objects_applied(report.written.len() as u64);
        self.metrics.objects_pruned(pruned as u64);
        self.metrics.managed_objects(desired.objects.len() as u64);
        tracing::info!(service = "gitops", revision = %head, written = report.written.len(), unchanged = report.unchanged, pruned, "applied");
        self.engine.events.sync(
            false,
            "Applied",
            format!(
                "revision {head}: {} objects written, {} unchanged, {pruned} pruned",
                report.written.len(),
                report.unchanged
            ),
        );
        for key in report.written.iter().take(20) {
            if let Some(p) = desired.get(key) {
                self.engine.events.object(
                    key,
                    &p.api_version,
                    false,
                    "Applied",
                    format!("applied revision {}", &head[..head.len().min(12)]),
                );
            }
        }
        self.desired = Some(desired);
        Ok(())
    }

    async fn finish(
        &mut self,
        head: &str,
        started: Instant,
        result: Result<(), RevisionError>,
        rollback: bool,
    ) {
        match result {
            Ok(()) => {
                self.status.applied_revision = head.to_string();
                self.status.last_error.clear();
                self.status.last_applied_time = status::now();
                self.status.objects = self.inventory.entries.len() as u64;
                self.status.health = "Progressing".into();
                self.status.record(
                    head,
                    if rollback {
                        "rolled-back-to"
                    } else {
                        "applied"
                    },
                    "",
                );
                let unix = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
                self.metrics.applied(head, unix);
                self.metrics
                    .reconcile_finished(started.elapsed(), "success");
                self.health_deadline = Some(Instant::now() + self.engine.settings.health_timeout);
                self.publish().await;
                self.check_health().await;
            }
            Err(e) => {
                let refused = !matches!(
                    &e,
                    RevisionError::Engine(
                        EngineError::Apply { .. }
                            | EngineError::Immutable { .. }
                            | EngineError::Cluster { .. }
                    )
                );
                let verdict = if refused { "refused" } else { "failed" };
                self.metrics.error(e.kind());
                self.metrics.reconcile_finished(started.elapsed(), verdict);
                let message = format!("{}: {e}", &head[..head.len().min(12)]);
                // A refused revision is tried again at every poll (the config or an
                // annotation may allow it now), but reported only when the reason changes.
                if self.status.last_error == message {
                    return;
                }
                tracing::error!(service = "gitops", revision = %head, error = %e, "revision {verdict}");
                self.engine.events.sync(
                    true,
                    if refused { "Refused" } else { "Failed" },
                    format!("revision {head}: {e}"),
                );
                self.status.last_error = message;
                self.status.record(head, verdict, e.to_string());
                self.publish().await;
                if !refused {
                    self.remember_failed(head);
                    self.roll_back(head).await;
                }
            }
        }
    }

    /// Health of the applied revision, checked every half second while it is awaited.
    async fn check_health(&mut self) {
        let (Some(deadline), Some(desired)) = (self.health_deadline, &self.desired) else {
            return;
        };
        let revision = desired.revision.clone();
        let failure = match self.engine.health(desired) {
            Health::Healthy => {
                self.health_deadline = None;
                self.mark_healthy(revision).await;
                return;
            }
            Health::Failed(why) => why,
            Health::Progressing(why) if Instant::now() >= deadline => {
                format!(
                    "not healthy within {} s: {why}",
                    self.engine.settings.health_timeout.as_secs()
                )
            }
            Health::Progressing(_) => return,
        };
        self.health_deadline = None;
        tracing::error!(service = "gitops", revision = %revision, reason = %failure, "revision unhealthy");
        self.metrics.error("health");
        self.engine
            .events
            .sync(true, "Unhealthy", format!("revision {revision}: {failure}"));
        self.status.health = "Failed".into();
        self.status.last_error = format!("{}: {failure}", &revision[..revision.len().min(12)]);
        self.status.record(&revision, "failed", failure);
        self.remember_failed(&revision);
        self.publish().await;
        self.roll_back(&revision).await;
    }

    async fn mark_healthy(&mut self, revision: String) {
        self.node.last_healthy = Some(revision.clone());
        self.save_node();
        let rev = revision.clone();
        let _ = git(&self.source, move |s| s.pin(&rev, "healthy")).await;
        self.status.health = "Healthy".into();
        self.status.last_healthy_revision = revision.clone();
        self.status.record(&revision, "healthy", "");
        tracing::info!(service = "gitops", revision = %revision, "healthy");
        self.publish().await;
    }

    /// Re-applies the last healthy revision (from the mirror; it was verified
    /// when first applied) if auto-rollback is on.
    async fn roll_back(&mut self, failed: &str) {
        if !self.engine.settings.auto_rollback {
            return;
        }
        let Some(target) = self.node.last_healthy.clone().filter(|t| t != failed) else {
            tracing::warn!(
                service = "gitops",
                "no earlier healthy revision to roll back to"
            );
            return;
        };
        tracing::warn!(service = "gitops", failed, target = %target, "rolling back to the last healthy revision");
        self.engine.events.sync(
            true,
            "RollingBack",
            format!("revision {failed} failed; re-applying {target}"),
        );
        let started = Instant::now();
        let result = self.apply_revision(&target, false).await;
        Box::pin(self.finish(&target, started, result, true)).await;
    }

    async fn save_inventory(&mut self) {
        if let Err(e) = self.inventory.save(&self.state_dir.inventory()) {
            tracing::warn!(service = "gitops", error = %e, "saving the inventory on the node");
        }
        if let Err(e) = self
            .inventory
            .store(&self.engine.client, &self.engine.name)
            .await
        {
            tracing::warn!(service = "gitops", error = %crate::cluster::message(&e), "saving the inventory in the cluster");
        }
    }

    fn remember_failed(&mut self, revision: &str) {
        self.node.failed.push(revision.to_string());
        let extra = self.node.failed.len().saturating_sub(20);
        self.node.failed.drain(..extra);
        self.save_node();
    }

    fn save_node(&self) {
        if let Err(e) = self.state_dir.save(&self.node) {
            tracing::warn!(service = "gitops", error = %e, "saving the reconciler's state");
        }
    }
}
