//! The reconciler's view of the cluster: discovery (which kinds exist, at which
//! resource, namespaced or not), a watch cache of every object cairn manages,
//! and the writes (server-side apply, delete).
//!
//! The cache is what makes a no-op reconcile free: one watch per managed kind,
//! selected by cairn's owner label, keeps the live objects in memory, so
//! comparing desired with live sends no request; and every change to a managed
//! object arrives as an event, which is how drift is seen within seconds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::objects::{FIELD_MANAGER, OWNER_LABEL, OWNER_VALUE, ObjKey};

/// A kind the API server serves, resolved for one apiVersion.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub ar: ApiResource,
    pub namespaced: bool,
}

impl Resolved {
    fn api(&self, client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(client.clone(), namespace, &self.ar)
        } else {
            Api::all_with(client.clone(), &self.ar)
        }
    }
}

/// Splits `group/version` (or a bare core `version`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The API server's kinds, refreshed after CRDs are applied (a discovery result
/// is a snapshot).
pub struct Kinds {
    client: kube::Client,
    discovery: RwLock<Arc<Discovery>>,
}

impl Kinds {
    pub async fn discover(client: kube::Client) -> Result<Kinds, kube::Error> {
        let d = Discovery::new(client.clone()).run_aggregated().await?;
        Ok(Kinds {
            client,
            discovery: RwLock::new(Arc::new(d)),
        })
    }

    pub async fn refresh(&self) -> Result<(), kube::Error> {
        let d = Discovery::new(self.client.clone()).run_aggregated().await?;
        *self.discovery.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(d);
        Ok(())
    }

    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let d = self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        d.resolve_gvk(&gvk).map(|(ar, caps)| Resolved {
            ar,
            namespaced: caps.scope == Scope::Namespaced,
        })
    }
}

/// One watch per (group, kind); its receiver turns true once the first list is in.
type Watches = HashMap<(String, String), watch::Receiver<bool>>;

/// Live managed objects by key, kept current by one watch per kind.
#[derive(Clone)]
pub struct Cache {
    client: kube::Client,
    objects: Arc<RwLock<HashMap<ObjKey, Arc<Value>>>>,
    watches: Arc<tokio::sync::Mutex<Watches>>,
    changes: mpsc::UnboundedSender<ObjKey>,
}

fn key_of(ar: &ApiResource, v: &Value) -> Option<ObjKey> {
    Some(ObjKey {
        group: ar.group.clone(),
        kind: ar.kind.clone(),
        namespace: v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        name: v.pointer("/metadata/name")?.as_str()?.to_string(),
    })
}

impl Cache {
    /// A cache and the stream of keys whose live object changed (drift candidates).
    pub fn new(client: kube::Client) -> (Cache, mpsc::UnboundedReceiver<ObjKey>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = Cache {
            client,
            objects: Default::default(),
            watches: Default::default(),
            changes: tx,
        };
        (cache, rx)
    }

    /// The live object, if cairn manages one under this key.
    pub fn get(&self, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.objects.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches `r`'s kind (once) and waits until its first list is in the cache.
    pub async fn watch(&self, r: &Resolved) -> Result<(), String> {
        let id = (r.ar.group.clone(), r.ar.kind.clone());
        let mut ready = {
            let mut watches = self.watches.lock().await;
            match watches.get(&id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    tokio::spawn(self.clone().run_watch(r.ar.clone(), tx));
                    watches.insert(id, rx.clone());
                    rx
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
            .await
            .map_err(|_| format!("the watch of {} did not list within 60 s", r.ar.kind))?
            .map_err(|_| format!("the watch of {} ended", r.ar.kind))?;
        Ok(())
    }

    async fn run_watch(self, ar: ApiResource, ready: watch::Sender<bool>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let config = watcher::Config::default().labels(&format!("{OWNER_LABEL}={OWNER_VALUE}"));
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut listed = HashSet::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(service = "gitops", kind = %ar.kind, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            match event {
                watcher::Event::Init => listed.clear(),
                watcher::Event::InitApply(o) => {
                    if let Some(k) = self.store(&ar, o) {
                        listed.insert(k);
                    }
                }
                watcher::Event::InitDone => {
                    let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
                    objects.retain(|k, _| {
                        k.group != ar.group || k.kind != ar.kind || listed.contains(k)
                    });
                    drop(objects);
                    let _ = ready.send(true);
                }
                watcher::Event::Apply(o) => {
                    if let Some(k) = self.store(&ar, o) {
                        let _ = self.changes.send(k);
                    }
                }
                watcher::Event::Delete(o) => {
                    if let Some(k) = serde_json::to_value(&o).ok().and_then(|v| key_of(&ar, &v)) {
                        self.objects
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&k);
                        let _ = self.changes.send(k);
                    }
                }
            }
        }
    }

    fn store(&self, ar: &ApiResource, o: DynamicObject) -> Option<ObjKey> {
        let mut v = serde_json::to_value(&o).ok()?;
        if let Some(obj) = v.as_object_mut() {
            // List items come without their type; desired bodies carry it.
            obj.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
            obj.insert("kind".into(), Value::String(ar.kind.clone()));
        }
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields"); // the bulk of an object, and never compared
        }
        let k = key_of(ar, &v)?;
        self.objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.clone(), Arc::new(v));
        Some(k)
    }

    /// Records the object a write returned, so a compare right after it sees it
    /// even before the watch event arrives.
    pub fn note(&self, ar: &ApiResource, o: DynamicObject) {
        self.store(ar, o);
    }
}

/// Server-side apply of one object as cairn (forced: git is the authority for
/// the fields it sets).
pub async fn apply(
    client: &kube::Client,
    r: &Resolved,
    key: &ObjKey,
    body: &Value,
) -> Result<DynamicObject, kube::Error> {
    r.api(client, &key.namespace)
        .patch(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
}

/// Deletes one object (background propagation) and, with `wait`, polls until it is gone.
pub async fn delete(
    client: &kube::Client,
    r: &Resolved,
    key: &ObjKey,
    wait: Option<Duration>,
) -> Result<(), kube::Error> {
    let api = r.api(client, &key.namespace);
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(limit) = wait {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if api.get_opt(&key.name).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The live object straight from the API server (not the cache), for the
/// owner-label check before a delete.
pub async fn get(
    client: &kube::Client,
    r: &Resolved,
    key: &ObjKey,
) -> Result<Option<DynamicObject>, kube::Error> {
    r.api(client, &key.namespace).get_opt(&key.name).await
}

/// When an apply failed because it changes an immutable field: the field path(s).
pub fn immutable_fields(e: &kube::Error) -> Option<String> {
    let kube::Error::Api(s) = e else { return None };
    if s.code != 422 || !s.message.contains("immutable") {
        return None;
    }
    let fields: Vec<&str> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| c.message.contains("immutable"))
        .map(|c| c.field.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    Some(if fields.is_empty() {
        s.message.clone()
    } else {
        fields.join(", ")
    })
}

/// The API server's message for a failed request (its status text, not the
/// debug form kube prints).
pub fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Requests this process sent to the API server, by kind (watches not counted):
/// what a no-op reconcile is measured by.
pub static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A client for `kubeconfig` that counts its requests in [`READS`] and [`WRITES`].
pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    use std::sync::atomic::Ordering;
    let file = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    let count = tower::util::MapRequestLayer::new(|req: http::Request<kube::client::Body>| {
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
        if req.method() == http::Method::GET {
            if !watch {
                READS.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            WRITES.fetch_add(1, Ordering::Relaxed);
        }
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&count)
        .build())
}
