//! `cairn-gitops`: the GitOps reconciler as a supervised process of the OS.
//! The init starts it on control-plane nodes with the machine config's
//! `gitops` section written to a file; tests start it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_gitops::cluster::{self, Cache, Kinds};
use cairn_gitops::engine::{Engine, Settings};
use cairn_gitops::leader::{self, EtcdAccess};
use cairn_gitops::metrics::Metrics;
use cairn_gitops::reconciler::Reconciler;
use cairn_gitops::render::RenderOptions;
use cairn_gitops::source::{Auth, GitRef, Source, SourceSpec};
use cairn_gitops::state::StateDir;
use cairn_gitops::status::{self, Events};
use cairn_machine_config::GitSource;
use clap::Parser;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Parser, Debug)]
#[command(about = "cairn's GitOps reconciler")]
struct Args {
    /// The machine config's `gitops` section (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Credentials for the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Mirror, inventory and state (on the DATA partition).
    #[arg(long, default_value = "/var/lib/cairn/gitops")]
    state_dir: PathBuf,
    /// This reconciler's name in the election and the status (the node name).
    #[arg(long)]
    identity: String,
    /// The instance: names the status object (`kubectl get gitops NAME`), the
    /// inventory and the election, so several repositories can be followed.
    #[arg(long, default_value = status::DEFAULT_NAME)]
    name: String,
    /// etcd for the leader election (https://host:port); without it this
    /// reconciler acts alone.
    #[arg(long, requires_all = ["etcd_ca", "etcd_cert", "etcd_key"])]
    etcd_endpoint: Option<String>,
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// Lease time of the election: how long a dead leader keeps the role.
    #[arg(long, default_value_t = 10)]
    lease_seconds: u64,
    /// Certificate and key of the webhook/metrics listener (HTTPS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Address of the webhook/metrics listener (the port comes from the config).
    #[arg(long, default_value = "0.0.0.0")]
    listen_address: std::net::IpAddr,
}

fn main() {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(service = "gitops", error = %e, "starting the runtime");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        tracing::error!(service = "gitops", error = format!("{e:#}"), "stopped");
        std::process::exit(1);
    }
}

/// Splits credentials out of an `https://user:token@host/...` URL.
fn url_and_auth(g: &GitSource) -> (String, Auth) {
    let a = &g.auth;
    if let Some(key) = &a.ssh_key {
        return (
            g.url.clone(),
            Auth::SshKey {
                private_key: key.clone(),
                passphrase: a.ssh_key_passphrase.clone(),
            },
        );
    }
    if let Some(t) = &a.token {
        return (g.url.clone(), Auth::Token(t.clone()));
    }
    if let (Some(u), Some(p)) = (&a.username, &a.password) {
        return (
            g.url.clone(),
            Auth::Basic {
                username: u.clone(),
                password: p.clone(),
            },
        );
    }
    if let Some(rest) = g.url.strip_prefix("https://")
        && let Some((userinfo, host)) = rest.split_once('@').filter(|(u, _)| !u.contains('/'))
    {
        let url = format!("https://{host}");
        return match userinfo.split_once(':') {
            Some((u, p)) => (
                url,
                Auth::Basic {
                    username: u.into(),
                    password: p.into(),
                },
            ),
            None => (url, Auth::Token(userinfo.into())),
        };
    }
    (g.url.clone(), Auth::None)
}

fn source_spec(g: &GitSource, state: &StateDir) -> SourceSpec {
    let (url, auth) = url_and_auth(g);
    let reference = match (&g.branch, &g.tag, &g.commit) {
        (_, Some(t), _) => GitRef::Tag(t.clone()),
        (_, _, Some(c)) => GitRef::Commit(c.clone()),
        (b, _, _) => GitRef::Branch(b.clone().unwrap_or_else(|| "main".into())),
    };
    SourceSpec {
        url,
        reference,
        path: g.path.clone().unwrap_or_default(),
        auth,
        ca_pem: g.ca.clone(),
        known_hosts: g.known_hosts.clone(),
        timeout: Duration::from_secs(g.timeout_seconds.unwrap_or(60).into()),
        trusted_ssh_keys: g.trust.ssh_keys.clone(),
        trusted_pgp_keys: g.trust.pgp_keys.clone(),
        allow_history_rewrite: g.trust.allow_history_rewrite,
        max_file_size: g.max_file_bytes.unwrap_or(1 << 20),
        mirror_dir: state.mirror(),
    }
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the webhook certificate")?;
    Ok(Arc::new(config))
}

async fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let git: GitSource = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not a gitops section", args.config.display()))?;
    git.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let state = StateDir(args.state_dir.clone());
    std::fs::create_dir_all(&state.0).with_context(|| format!("creating {}", state.0.display()))?;

    let metrics = Arc::new(Metrics::new());
    let trigger = Arc::new(tokio::sync::Notify::new());
    // The webhook/metrics listener runs on every node, leader or not: a push
    // may reach any of them (a follower's trigger is simply unused).
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = tls_config(cert, key)?;
        let port = git.webhook.as_ref().map_or(9443, |w| w.port);
        let secret = git
            .webhook
            .as_ref()
            .map(|w| w.secret.clone().into_bytes())
            .unwrap_or_default();
        let addr = SocketAddr::new(args.listen_address, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let (trigger, metrics) = (trigger.clone(), metrics.clone());
        tokio::spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(e) = cairn_gitops::webhook::serve(
                listener,
                tls,
                Arc::new(secret),
                trigger,
                metrics,
                never,
            )
            .await
            {
                tracing::error!(service = "gitops", error = %e, "webhook receiver stopped");
            }
        });
    }

    let mut leadership = match &args.etcd_endpoint {
        Some(endpoint) => {
            let access = EtcdAccess {
                endpoint: endpoint.clone(),
                ca: args.etcd_ca.clone().unwrap_or_default(),
                cert: args.etcd_cert.clone().unwrap_or_default(),
                key: args.etcd_key.clone().unwrap_or_default(),
            };
            Some(
                leader::campaign(
                    &access,
                    &args.name,
                    &args.identity,
                    Duration::from_secs(args.lease_seconds),
                )
                .await?,
            )
        }
        None => None,
    };

    let client = cluster::client(&args.kubeconfig).await?;
    status::install(&client, &args.name)
        .await
        .map_err(|e| anyhow::anyhow!("installing the status kind: {}", cluster::message(&e)))?;
    let kinds = Kinds::discover(client.clone())
        .await
        .map_err(|e| anyhow::anyhow!("discovery: {}", cluster::message(&e)))?;
    let (cache, drift) = Cache::new(client.clone());
    let settings = Settings {
        default_namespace: git.default_namespace.clone(),
        concurrency: git.concurrency.unwrap_or(16).into(),
        prune: git.prune.enabled,
        max_delete_percent: git.prune.max_delete_percent,
        health_timeout: Duration::from_secs(git.health.timeout_seconds.into()),
        auto_rollback: git.health.auto_rollback,
    };
    let engine = Arc::new(Engine {
        events: Events::new(client.clone(), &args.identity, &args.name),
        name: args.name.clone(),
        client,
        kinds,
        cache,
        settings,
    });
    let spec = source_spec(&git, &state);
    let source = tokio::task::spawn_blocking(move || Source::open(spec)).await??;
    let interval = Duration::from_secs(git.interval_seconds.unwrap_or(30).into());
    let mut reconciler = Reconciler::new(engine, source, state, metrics, interval, &args.identity);
    reconciler.render = RenderOptions::default();
    reconciler.resume().await.map_err(anyhow::Error::msg)?;
    let lost = async {
        match &mut leadership {
            Some(l) => {
                let why = l.lost().await;
                tracing::error!(service = "gitops", reason = %why, "leadership lost; stopping so another reconciler takes over");
            }
            None => std::future::pending().await,
        }
    };
    reconciler.run(trigger, drift, lost).await;
    anyhow::bail!("leadership lost")
}
