//! One revision's objects into the cluster: plan (refuse bad input before
//! anything is written), apply in stages (only what changed or drifted), prune
//! (safely), judge health, and revert drift.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;

use crate::cluster::{self, Cache, Kinds, Resolved, split_api_version};
use crate::health::{self, Health};
use crate::inventory::{Entry, Inventory};
use crate::objects::{self, ObjKey, PRUNE_ANNOTATION, RECREATE_ANNOTATION, Stage};
use crate::render::{self, Object};
use crate::status::Events;

/// How the engine treats a revision (from the machine config's `gitops` section).
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_namespace: Option<String>,
    pub concurrency: usize,
    pub prune: bool,
    pub max_delete_percent: u8,
    pub health_timeout: Duration,
    pub auto_rollback: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error(
        "{origin}: kind {kind} of apiVersion {api_version} is not served by the API server, and no CustomResourceDefinition in this revision defines it"
    )]
    UnknownKind {
        origin: String,
        api_version: String,
        kind: String,
    },
    #[error(
        "{origin}: {key} is namespaced but names no namespace (set metadata.namespace, or gitops.defaultNamespace)"
    )]
    NoNamespace { origin: String, key: String },
    #[error(
        "refusing to prune {count} of {total} objects ({percent}%): more than gitops.prune.maxDeletePercent ({limit}%) — an empty or truncated commit? Raise the limit, or annotate the Sync object with gitops.cairn.dev/allow-mass-prune={revision}"
    )]
    MassDelete {
        count: usize,
        total: usize,
        percent: usize,
        limit: u8,
        revision: String,
    },
    #[error(
        "{key} ({origin}): the change touches immutable field(s) {fields}; annotate the object with gitops.cairn.dev/recreate: allow to let cairn delete and re-create it"
    )]
    Immutable {
        key: String,
        origin: String,
        fields: String,
    },
    #[error("{key} ({origin}): {message}")]
    Apply {
        key: String,
        origin: String,
        message: String,
    },
    #[error("{what}: {message}")]
    Cluster { what: String, message: String },
}

/// One desired object, checked and ready to write.
#[derive(Debug, Clone)]
pub struct Planned {
    pub key: ObjKey,
    pub api_version: String,
    pub stage: Stage,
    pub body: Value,
    pub hash: String,
    pub origin: String,
    recreate: bool,
}

/// A revision's objects in apply order.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub revision: String,
    pub objects: Vec<Planned>,
    index: HashMap<ObjKey, usize>,
}

impl Desired {
    pub fn get(&self, key: &ObjKey) -> Option<&Planned> {
        self.index.get(key).map(|&i| &self.objects[i])
    }

    pub fn inventory(&self) -> Inventory {
        Inventory {
            revision: self.revision.clone(),
            entries: self
                .objects
                .iter()
                .map(|p| Entry {
                    key: p.key.clone(),
                    api_version: p.api_version.clone(),
                    hash: p.hash.clone(),
                })
                .collect(),
        }
    }
}

/// What an apply wrote.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub written: Vec<ObjKey>,
    pub unchanged: usize,
}

pub struct Engine {
    /// The instance: names the status object, the inventory and the election.
    pub name: String,
    pub client: kube::Client,
    pub kinds: Kinds,
    pub cache: Cache,
    pub settings: Settings,
    pub events: Events,
}

fn annotation<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.pointer("/metadata/annotations")?.get(name)?.as_str()
}

/// What a CustomResourceDefinition in the revision declares: (group, kind) → namespaced.
fn declared_kinds(objects: &[Object]) -> HashMap<(String, String), (bool, Vec<String>)> {
    objects
        .iter()
        .filter(|o| o.group() == "apiextensions.k8s.io" && o.kind == "CustomResourceDefinition")
        .filter_map(|o| {
            let spec = o.body.get("spec")?;
            let group = spec.get("group")?.as_str()?.to_string();
            let kind = spec.pointer("/names/kind")?.as_str()?.to_string();
            let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
            let versions = spec
                .get("versions")?
                .as_array()?
                .iter()
                .filter_map(|v| v.get("name")?.as_str().map(str::to_string))
                .collect();
            Some(((group, kind), (namespaced, versions)))
        })
        .collect()
}

impl Engine {
    /// Checks a rendered revision against the API server's kinds (and the CRDs
    /// it brings) and prepares every object. Nothing is written; an error
    /// refuses the whole revision.
    pub fn plan(&self, revision: &str, mut objects: Vec<Object>) -> Result<Desired, EngineError> {
        let declared = declared_kinds(&objects);
        let mut scopes = Vec::with_capacity(objects.len());
        for o in &mut objects {
            let namespaced = match self.kinds.resolve(&o.api_version, &o.kind) {
                Some(r) => r.namespaced,
                None => {
                    let (group, version) = split_api_version(&o.api_version);
                    match declared.get(&(group.to_string(), o.kind.clone())) {
                        Some((namespaced, versions)) if versions.iter().any(|v| v == version) => {
                            *namespaced
                        }
                        _ => {
                            return Err(EngineError::UnknownKind {
                                origin: o.origin.clone(),
                                api_version: o.api_version.clone(),
                                kind: o.kind.clone(),
                            });
                        }
                    }
                }
            };
            if namespaced {
                if o.namespace.is_none() {
                    let Some(ns) = &self.settings.default_namespace else {
                        return Err(EngineError::NoNamespace {
                            origin: o.origin.clone(),
                            key: format!("{} {}", o.kind, o.name),
                        });
                    };
                    o.namespace = Some(ns.clone());
                    if let Some(meta) = o.body.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("namespace".into(), Value::String(ns.clone()));
                    }
                }
            } else {
                // kubectl ignores a namespace on a cluster-scoped object; so do we.
                o.namespace = None;
                if let Some(meta) = o.body.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("namespace");
                }
            }
            scopes.push(namespaced);
        }
        render::check_duplicates(&objects)?;
        let mut planned: Vec<Planned> = objects
            .into_iter()
            .zip(scopes)
            .map(|(mut o, namespaced)| {
                let group = o.group().to_string();
                objects::normalize(&o.kind, &group, &mut o.body);
                Planned {
                    stage: Stage::of(&group, &o.kind, namespaced),
                    recreate: annotation(&o.body, RECREATE_ANNOTATION) == Some("allow"),
                    hash: objects::hash(&o.body),
                    key: ObjKey {
                        group,
                        kind: o.kind,
                        namespace: o.namespace.unwrap_or_default(),
                        name: o.name,
                    },
                    api_version: o.api_version,
                    body: o.body,
                    origin: o.origin,
                }
            })
            .collect();
        planned.sort_by_key(|p| p.stage); // stable: file order within a stage
        let index = planned
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        Ok(Desired {
            revision: revision.to_string(),
            objects: planned,
            index,
        })
    }

    fn resolve(&self, p: &Planned) -> Result<Resolved, EngineError> {
        self.kinds
            .resolve(&p.api_version, &p.key.kind)
            .ok_or_else(|| EngineError::UnknownKind {
                origin: p.origin.clone(),
                api_version: p.api_version.clone(),
                kind: p.key.kind.clone(),
            })
    }

    /// Does the live object (from the cache) already hold `p`, as last applied?
    fn in_sync(&self, p: &Planned, last_hash: Option<&str>) -> bool {
        last_hash == Some(p.hash.as_str())
            && self
                .cache
                .get(&p.key)
                .is_some_and(|live| objects::holds(&p.body, Some(&live)))
    }

    /// Applies `desired` stage by stage, writing only objects whose desired
    /// state changed since `last` or whose live copy drifted. On an error the
    /// report so far is returned with it, so the caller can keep the inventory
    /// complete.
    pub async fn apply(
        &self,
        desired: &Desired,
        last: &Inventory,
    ) -> Result<ApplyReport, (ApplyReport, EngineError)> {
        let hashes = last.hashes();
        let mut report = ApplyReport::default();
        let stages: Vec<Stage> = {
            let mut s: Vec<Stage> = desired.objects.iter().map(|p| p.stage).collect();
            s.dedup();
            s
        };
        for stage in stages {
            let items: Vec<&Planned> = desired
                .objects
                .iter()
                .filter(|p| p.stage == stage)
                .collect();
            let mut resolved = Vec::with_capacity(items.len());
            for p in &items {
                match self.resolve(p) {
                    Ok(r) => resolved.push(r),
                    Err(e) => return Err((report, e)),
                }
            }
            let mut kinds_seen = HashSet::new();
            for r in &resolved {
                if kinds_seen.insert((r.ar.group.clone(), r.ar.kind.clone()))
                    && let Err(message) = self.cache.watch(r).await
                {
                    return Err((
                        report,
                        EngineError::Cluster {
                            what: "watching".into(),
                            message,
                        },
                    ));
                }
            }
            let todo: Vec<(&Planned, &Resolved)> = items
                .iter()
                .copied()
                .zip(&resolved)
                .filter(|(p, _)| !self.in_sync(p, hashes.get(&p.key).copied()))
                .collect();
            report.unchanged += items.len() - todo.len();
            let results: Vec<(ObjKey, Result<(), EngineError>)> = futures::stream::iter(todo)
                .map(|(p, r)| async move { (p.key.clone(), self.write(p, r).await) })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
            let mut first_error = None;
            for (key, result) in results {
                match result {
                    Ok(()) => report.written.push(key),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err((report, e));
            }
            if stage == Stage::Definitions
                && !report.written.is_empty()
                && let Err(e) = self.settle_definitions(&items).await
            {
                return Err((report, e));
            }
        }
        Ok(report)
    }

    /// After CRDs were written: wait until each is Established, then discover again.
    async fn settle_definitions(&self, items: &[&Planned]) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for p in items
            .iter()
            .filter(|p| p.key.kind == "CustomResourceDefinition")
        {
            loop {
                let live = self.cache.get(&p.key);
                if live.is_some_and(|l| {
                    health::assess(&p.key.group, &p.key.kind, &l) == Health::Healthy
                }) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(EngineError::Apply {
                        key: p.key.to_string(),
                        origin: p.origin.clone(),
                        message: "not Established within 60 s".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kinds
            .refresh()
            .await
            .map_err(|e| EngineError::Cluster {
                what: "discovery after applying CRDs".into(),
                message: cluster::message(&e),
            })
    }

    /// One server-side apply; an immutable-field refusal becomes delete and
    /// re-create when the object allows it.
    async fn write(&self, p: &Planned, r: &Resolved) -> Result<(), EngineError> {
        let fail = |e: &kube::Error| match cluster::immutable_fields(e) {
            Some(fields) => EngineError::Immutable {
                key: p.key.to_string(),
                origin: p.origin.clone(),
                fields,
            },
            None => EngineError::Apply {
                key: p.key.to_string(),
                origin: p.origin.clone(),
                message: cluster::message(e),
            },
        };
        let result = match cluster::apply(&self.client, r, &p.key, &p.body).await {
            Err(e) if p.recreate && cluster::immutable_fields(&e).is_some() => {
                tracing::info!(service = "gitops", object = %p.key, "immutable field changed; deleting and re-creating (allowed by annotation)");
                cluster::delete(&self.client, r, &p.key, Some(Duration::from_secs(60)))
                    .await
                    .map_err(|e| fail(&e))?;
                self.events.object(
                    &p.key,
                    &p.api_version,
                    false,
                    "Recreated",
                    "immutable field changed; deleted and re-created".into(),
                );
                cluster::apply(&self.client, r, &p.key, &p.body).await
            }
            other => other,
        };
        match result {
            Ok(o) => {
                self.cache.note(&r.ar, o);
                Ok(())
            }
            Err(e) => {
                let err = fail(&e);
                self.events
                    .object(&p.key, &p.api_version, true, "ApplyFailed", err.to_string());
                Err(err)
            }
        }
    }

    /// The objects `last` has and `desired` lacks, refused as a whole when they
    /// are more than the allowed share of `last`.
    pub fn prune_plan(
        &self,
        desired: &Desired,
        last: &Inventory,
        allowance: Option<&str>,
    ) -> Result<Vec<Entry>, EngineError> {
        if !self.settings.prune {
            return Ok(Vec::new());
        }
        let gone: Vec<Entry> = last
            .entries
            .iter()
            .filter(|e| desired.get(&e.key).is_none())
            .cloned()
            .collect();
        let total = last.entries.len();
        let limit = self.settings.max_delete_percent;
        let allowed = allowance.is_some_and(|a| a.len() >= 7 && desired.revision.starts_with(a));
        if !gone.is_empty() && gone.len() * 100 > limit as usize * total && !allowed {
            return Err(EngineError::MassDelete {
                count: gone.len(),
                total,
                percent: gone.len() * 100 / total.max(1),
                limit,
                revision: desired.revision.clone(),
            });
        }
        Ok(gone)
    }

    /// Deletes `gone` in reverse apply order. Skips objects that no longer carry
    /// cairn's owner label and protected kinds not annotated to allow it.
    /// Returns the entries that could not be deleted (they stay in the inventory).
    pub async fn prune(&self, gone: &[Entry]) -> (usize, Vec<Entry>) {
        let mut kept = Vec::new();
        let mut deleted = 0;
        for e in gone.iter().rev() {
            let Some(r) = self.kinds.resolve(&e.api_version, &e.key.kind) else {
                continue; // the kind itself is gone, and its objects with it
            };
            let live = match cluster::get(&self.client, &r, &e.key).await {
                Ok(Some(o)) => o,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(service = "gitops", object = %e.key, error = %cluster::message(&err), "prune: reading the live object failed; kept in the inventory");
                    kept.push(e.clone());
                    continue;
                }
            };
            let labels = live.metadata.labels.unwrap_or_default();
            if labels.get(objects::OWNER_LABEL).map(String::as_str) != Some(objects::OWNER_VALUE) {
                tracing::info!(service = "gitops", object = %e.key, "prune: no longer carries cairn's owner label; left alone");
                continue;
            }
            let annotations = live.metadata.annotations.unwrap_or_default();
            if objects::protected(&e.key.group, &e.key.kind)
                && annotations.get(PRUNE_ANNOTATION).map(String::as_str) != Some("allow")
            {
                tracing::warn!(service = "gitops", object = %e.key, "prune: protected kind; left in place (annotate gitops.cairn.dev/prune: allow to delete)");
                self.events.object(&e.key, &e.api_version, true, "PruneSkipped", format!("{} is a protected kind; removed from git but left in place (annotate {PRUNE_ANNOTATION}: allow to delete it)", e.key.kind));
                continue;
            }
            match cluster::delete(&self.client, &r, &e.key, None).await {
                Ok(()) => {
                    deleted += 1;
                    tracing::info!(service = "gitops", object = %e.key, "pruned");
                    self.events.object(
                        &e.key,
                        &e.api_version,
                        false,
                        "Pruned",
                        "removed from git; deleted".into(),
                    );
                }
                Err(err) => {
                    tracing::warn!(service = "gitops", object = %e.key, error = %cluster::message(&err), "prune failed; kept in the inventory");
                    self.events.object(
                        &e.key,
                        &e.api_version,
                        true,
                        "PruneFailed",
                        cluster::message(&err),
                    );
                    kept.push(e.clone());
                }
            }
        }
        (deleted, kept)
    }

    /// The revision's health now, from the cache: Failed if any object failed,
    /// Progressing (naming the first waiting object) if any is not there yet.
    pub fn health(&self, desired: &Desired) -> Health {
        let mut waiting = None;
        for p in &desired.objects {
            let h = match self.cache.get(&p.key) {
                Some(live) => health::assess(&p.key.group, &p.key.kind, &live),
                None => Health::Progressing("not in the cluster".into()),
            };
            match h {
                Health::Healthy => {}
                Health::Failed(why) => return Health::Failed(format!("{}: {why}", p.key)),
                Health::Progressing(why) => {
                    waiting.get_or_insert_with(|| format!("{}: {why}", p.key));
                }
            }
        }
        waiting.map_or(Health::Healthy, Health::Progressing)
    }

    /// A managed object changed in the cluster: re-apply it if it no longer
    /// holds the desired state. Returns whether it was written.
    pub async fn correct_drift(
        &self,
        desired: &Desired,
        key: &ObjKey,
    ) -> Result<bool, EngineError> {
        let Some(p) = desired.get(key) else {
            return Ok(false);
        };
        if self
            .cache
            .get(key)
            .is_some_and(|live| objects::holds(&p.body, Some(&live)))
        {
            return Ok(false);
        }
        let r = self.resolve(p)?;
        self.write(p, &r).await?;
        tracing::info!(service = "gitops", object = %key, "drift reverted");
        self.events.object(
            key,
            &p.api_version,
            false,
            "DriftReverted",
            "a managed field was changed in the cluster; restored from git".into(),
        );
        Ok(true)
    }
}

/// The inventory after a partial apply: the last one (in its order), updated
/// with what was written, new objects appended.
pub fn merged(last: &Inventory, desired: &Desired, written: &[ObjKey]) -> Inventory {
    let mut entries = last.entries.clone();
    let at: HashMap<ObjKey, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.clone(), i))
        .collect();
    for k in written {
        let Some(p) = desired.get(k) else { continue };
        let e = Entry {
            key: k.clone(),
            api_version: p.api_version.clone(),
            hash: p.hash.clone(),
        };
        match at.get(k) {
            Some(&i) => entries[i] = e,
            None => entries.push(e),
        }
    }
    Inventory {
        revision: last.revision.clone(),
        entries,
    }
}

/// Shared handle for the webhook and main loop.
pub type SharedEngine = Arc<Engine>;
