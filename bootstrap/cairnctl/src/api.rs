//! The commands that talk to nodes through the machine API.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use cairn_api::proto::{self, machine_client::MachineClient};
use cairnctl::clientconfig::{self, ClientConfig};
use cairnctl::connect::{Unreachable, connect};
use serde::Serialize;
use tonic::Code;
use tonic::transport::Channel;

use crate::output::{self, Format, Tabular};
use crate::{Cmd, ConfigCmd, EtcdCmd, GitopsCmd, ServiceCmd};

pub struct Context {
    cfg: ClientConfig,
    nodes: Vec<String>,
    format: Format,
}

impl Context {
    pub fn new(cairnconfig: Option<&Path>, nodes: Vec<String>, format: Format) -> Result<Context> {
        let path = clientconfig::path(cairnconfig)
            .context("no client config: pass --cairnconfig or set $CAIRNCONFIG")?;
        let cfg = ClientConfig::load(&path)?;
        let nodes = if nodes.is_empty() {
            cfg.endpoints.clone()
        } else {
            nodes
        };
        if nodes.is_empty() {
            bail!(
                "no nodes: pass --nodes or list endpoints in {}",
                path.display()
            );
        }
        Ok(Context { cfg, nodes, format })
    }

    fn one_node(&self, what: &str) -> Result<&str> {
        match self.nodes.as_slice() {
            [one] => Ok(one),
            _ => bail!("{what} takes exactly one node (--nodes)"),
        }
    }

    async fn client(&self, node: &str) -> Result<MachineClient<Channel>> {
        connect(&self.cfg, node).await
    }
}

/// The exit code for an error: 3 refused credentials or role, 4 unreachable, 1 else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.downcast_ref::<Unreachable>().is_some() {
            return 4;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                Code::PermissionDenied | Code::Unauthenticated => 3,
                Code::Unavailable => 4,
                _ => 1,
            };
        }
    }
    1
}

/// A tonic status as an error that keeps the status (for the exit code) and says
/// which node and call it came from.
fn status(node: &str, call: &str, s: tonic::Status) -> anyhow::Error {
    let message = format!("{node}: {call}: {} ({:?})", s.message(), s.code());
    anyhow::Error::new(s).context(message)
}

/// Runs one unary call on every node, then prints the answers; the first failure
/// (after the others are printed) decides the exit code.
macro_rules! each_node {
    ($ctx:expr, $call:expr, |$client:ident| $body:expr, $view:expr) => {{
        let mut answers = Vec::new();
        let mut first_error: Option<anyhow::Error> = None;
        for node in &$ctx.nodes {
            let result: Result<_> = async {
                let mut $client = $ctx.client(node).await?;
                let reply = $body.await.map_err(|s| status(node, $call, s))?;
                Ok($view(reply.into_inner()))
            }
            .await;
            match result {
                Ok(v) => answers.push((node.clone(), v)),
                Err(e) if $ctx.nodes.len() > 1 => {
                    eprintln!("cairnctl: {node}: {e:#}");
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        output::print($ctx.format, &answers)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(answers),
        }
    }};
}

pub async fn run(ctx: &Context, cmd: Cmd) -> Result<i32> {
    let empty = proto::Empty {};
    match cmd {
        Cmd::Version => {
            each_node!(ctx, "Version", |c| c.version(empty), VersionView::from)?;
        }
        Cmd::Health => {
            let answers = each_node!(ctx, "Health", |c| c.health(empty), HealthView::from)?;
            if answers.iter().any(|(_, h)| !h.healthy) {
                return Ok(1);
            }
        }
        Cmd::Services => {
            each_node!(
                ctx,
                "ServiceList",
                |c| c.service_list(empty),
                ServicesView::from
            )?;
        }
        Cmd::Restart { name } => service(ctx, ServiceCmd::Restart { name }).await?,
        Cmd::Service(cmd) => service(ctx, cmd).await?,
        Cmd::Logs {
            service,
            follow,
            tail,
        } => {
            let request = proto::LogsRequest {
                service,
                tail_lines: tail.unwrap_or(0),
                follow,
            };
            stream_lines(ctx, "Logs", follow, |mut c| {
                let r = request.clone();
                async move { c.logs(r).await }
            })
            .await?;
        }
        Cmd::Dmesg { follow, tail } => {
            let request = proto::DmesgRequest {
                tail_lines: tail.unwrap_or(0),
                follow,
            };
            stream_lines(ctx, "Dmesg", follow, |mut c| {
                let r = request;
                async move { c.dmesg(r).await }
            })
            .await?;
        }
        Cmd::Reboot => {
            each_node!(ctx, "Reboot", |c| c.reboot(empty), |_| Done("rebooting"))?;
        }
        Cmd::Shutdown => {
            each_node!(ctx, "Shutdown", |c| c.shutdown(empty), |_| Done(
                "shutting down"
            ))?;
        }
        Cmd::Kubeconfig { server, .. } => {
            let node = ctx.one_node("kubeconfig")?;
            let reply = ctx
                .client(node)
                .await?
                .kubeconfig(empty)
                .await
                .map_err(|s| status(node, "Kubeconfig", s))?
                .into_inner();
            let text =
                String::from_utf8(reply.kubeconfig).context("the kubeconfig is not UTF-8")?;
            print!("{}", cairnctl::with_server(&text, server.as_deref())?);
        }
        Cmd::Etcd(EtcdCmd::Members) => {
            each_node!(
                ctx,
                "EtcdMembers",
                |c| c.etcd_members(empty),
                MembersView::from
            )?;
        }
        Cmd::Etcd(EtcdCmd::Status) => {
            each_node!(
                ctx,
                "EtcdStatus",
                |c| c.etcd_status(empty),
                EtcdStatusView::from
            )?;
        }
        Cmd::Etcd(EtcdCmd::Defrag) => {
            each_node!(ctx, "EtcdDefragment", |c| c.etcd_defragment(empty), |_| {
                Done("defragmented")
            })?;
        }
        Cmd::Etcd(EtcdCmd::Snapshot { file }) => snapshot(ctx, &file).await?,
        Cmd::Gitops(GitopsCmd::Status) => {
            each_node!(
                ctx,
                "GitOpsStatus",
                |c| c.git_ops_status(empty),
                GitopsView::from
            )?;
        }
        Cmd::Gitops(GitopsCmd::Sync) => {
            each_node!(ctx, "GitOpsSync", |c| c.git_ops_sync(empty), |_| Done(
                "sync requested"
            ))?;
        }
        Cmd::Gitops(cmd @ (GitopsCmd::Suspend | GitopsCmd::Resume)) => {
            let suspend = matches!(cmd, GitopsCmd::Suspend);
            each_node!(
                ctx,
                "GitOpsSuspend",
                |c| c.git_ops_suspend(proto::GitOpsSuspendRequest { suspend }),
                |_| Done(if suspend { "suspended" } else { "resumed" })
            )?;
        }
        Cmd::Config(ConfigCmd::Get) => {
            let node = ctx.one_node("config get")?;
            let reply = ctx
                .client(node)
                .await?
                .config_get(empty)
                .await
                .map_err(|s| status(node, "ConfigGet", s))?
                .into_inner();
            match ctx.format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "config": reply.config_yaml })
                    )?
                ),
                _ => print!("{}", reply.config_yaml),
            }
        }
        Cmd::Config(ConfigCmd::Apply {
            file,
            dry_run,
            reboot,
        }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let request = proto::ConfigApplyRequest {
                config_yaml: text,
                dry_run,
                reboot,
            };
            each_node!(
                ctx,
                "ConfigApply",
                |c| c.config_apply(request.clone()),
                ApplyView::from
            )?;
        }
        // `main` runs these without a connection.
        Cmd::Gen(_) | Cmd::Completion { .. } => bail!("this command talks to no node"),
    }
    Ok(0)
}

async fn service(ctx: &Context, cmd: ServiceCmd) -> Result<()> {
    let (call, done) = match &cmd {
        ServiceCmd::Start { .. } => ("ServiceStart", "started"),
        ServiceCmd::Stop { .. } => ("ServiceStop", "stopped"),
        ServiceCmd::Restart { .. } => ("ServiceRestart", "restarted"),
        ServiceCmd::Kill { .. } => ("ServiceKill", "signalled"),
    };
    each_node!(
        ctx,
        call,
        |c| async {
            match &cmd {
                ServiceCmd::Start { name } => {
                    c.service_start(proto::ServiceRequest { name: name.clone() })
                        .await
                }
                ServiceCmd::Stop { name } => {
                    c.service_stop(proto::ServiceRequest { name: name.clone() })
                        .await
                }
                ServiceCmd::Restart { name } => {
                    c.service_restart(proto::ServiceRequest { name: name.clone() })
                        .await
                }
                ServiceCmd::Kill { name, signal } => {
                    c.service_kill(proto::ServiceKillRequest {
                        name: name.clone(),
                        signal: signal.clone(),
                    })
                    .await
                }
            }
        },
        |_| Done(done)
    )?;
    Ok(())
}

/// Streams whole lines to stdout; several nodes (no follow) get a `node: ` prefix.
async fn stream_lines<F, Fut>(ctx: &Context, call: &str, follow: bool, open: F) -> Result<()>
where
    F: Fn(MachineClient<Channel>) -> Fut,
    Fut: std::future::Future<
            Output = Result<tonic::Response<tonic::Streaming<proto::LogChunk>>, tonic::Status>,
        >,
{
    if follow {
        ctx.one_node("following")?;
    }
    let prefix = ctx.nodes.len() > 1;
    for node in &ctx.nodes {
        let mut stream = open(ctx.client(node).await?)
            .await
            .map_err(|s| status(node, call, s))?
            .into_inner();
        let mut stdout = std::io::stdout();
        while let Some(chunk) = stream.message().await.map_err(|s| status(node, call, s))? {
            if prefix {
                for line in chunk.data.split_inclusive(|b| *b == b'\n') {
                    stdout.write_all(format!("{node}: ").as_bytes())?;
                    stdout.write_all(line)?;
                }
            } else {
                stdout.write_all(&chunk.data)?;
            }
            stdout.flush()?;
        }
    }
    Ok(())
}

async fn snapshot(ctx: &Context, file: &Path) -> Result<()> {
    let node = ctx.one_node("etcd snapshot")?;
    let mut stream = ctx
        .client(node)
        .await?
        .etcd_snapshot(proto::Empty {})
        .await
        .map_err(|s| status(node, "EtcdSnapshot", s))?
        .into_inner();
    let partial = file.with_extension("part");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut size = 0u64;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| status(node, "EtcdSnapshot", s))?
    {
        out.write_all(&chunk.data)
            .with_context(|| format!("writing {}", partial.display()))?;
        size += chunk.data.len() as u64;
    }
    out.sync_all()?;
    if size == 0 {
        bail!("{node}: the snapshot stream was empty");
    }
    std::fs::rename(&partial, file).with_context(|| format!("renaming to {}", file.display()))?;
    eprintln!("wrote {} ({})", file.display(), output::bytes(size));
    Ok(())
}

// ---------------------------------------------------------------- views

#[derive(Serialize)]
struct Done(&'static str);

impl Tabular for Done {
    fn headers() -> &'static [&'static str] {
        &["RESULT"]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![self.0.to_owned()]]
    }
}

#[derive(Serialize)]
struct VersionView {
    version: String,
    hostname: String,
    node_ip: String,
    role: String,
    kernel: String,
    kubernetes_version: String,
    machine_id: String,
    uptime_seconds: u64,
    init_rss_bytes: u64,
}

impl From<proto::VersionReply> for VersionView {
    fn from(v: proto::VersionReply) -> Self {
        VersionView {
            version: v.version,
            hostname: v.hostname,
            node_ip: v.node_ip,
            role: v.role,
            kernel: v.kernel,
            kubernetes_version: v.kubernetes_version,
            machine_id: v.machine_id,
            uptime_seconds: v.uptime_seconds,
            init_rss_bytes: v.init_rss_bytes,
        }
    }
}

impl Tabular for VersionView {
    fn headers() -> &'static [&'static str] {
        &[
            "CAIRN",
            "HOSTNAME",
            "ADDRESS",
            "ROLE",
            "KERNEL",
            "KUBERNETES",
            "UPTIME",
        ]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![
            self.version.clone(),
            self.hostname.clone(),
            self.node_ip.clone(),
            self.role.clone(),
            self.kernel.clone(),
            self.kubernetes_version.clone(),
            format!("{}s", self.uptime_seconds),
        ]]
    }
}

#[derive(Serialize)]
struct HealthView {
    healthy: bool,
    checks: Vec<CheckView>,
}

#[derive(Serialize)]
struct CheckView {
    name: String,
    ok: bool,
    detail: String,
}

impl From<proto::HealthReply> for HealthView {
    fn from(h: proto::HealthReply) -> Self {
        HealthView {
            healthy: h.healthy,
            checks: h
                .checks
                .into_iter()
                .map(|c| CheckView {
                    name: c.name,
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
        }
    }
}

impl Tabular for HealthView {
    fn headers() -> &'static [&'static str] {
        &["CHECK", "OK", "DETAIL"]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        self.checks
            .iter()
            .map(|c| vec![c.name.clone(), c.ok.to_string(), c.detail.clone()])
            .collect()
    }
}

#[derive(Serialize)]
struct ServicesView(Vec<ServiceView>);

#[derive(Serialize)]
struct ServiceView {
    name: String,
    state: String,
    ready: bool,
    restarts: u32,
    pid: Option<i32>,
    memory_bytes: Option<u64>,
    last_event: Option<EventView>,
}

#[derive(Serialize)]
struct EventView {
    kind: String,
    detail: String,
    age_ms: u64,
}

impl From<proto::ServiceListReply> for ServicesView {
    fn from(r: proto::ServiceListReply) -> Self {
        ServicesView(
            r.services
                .into_iter()
                .map(|s| ServiceView {
                    name: s.name,
                    state: s.state,
                    ready: s.ready,
                    restarts: s.restarts,
                    pid: (s.pid != 0).then_some(s.pid),
                    memory_bytes: (s.memory_bytes != 0).then_some(s.memory_bytes),
                    last_event: s.events.into_iter().last().map(|e| EventView {
                        kind: e.kind,
                        detail: e.detail,
                        age_ms: e.age_ms,
                    }),
                })
                .collect(),
        )
    }
}

impl Tabular for ServicesView {
    fn headers() -> &'static [&'static str] {
        &[
            "SERVICE",
            "STATE",
            "READY",
            "RESTARTS",
            "PID",
            "MEMORY",
            "LAST EVENT",
        ]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        self.0
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.state.clone(),
                    s.ready.to_string(),
                    s.restarts.to_string(),
                    s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.memory_bytes
                        .map(output::bytes)
                        .unwrap_or_else(|| "-".into()),
                    s.last_event
                        .as_ref()
                        .map(|e| {
                            format!("{} {} ({}s ago)", e.kind, e.detail, e.age_ms / 1000)
                                .replace("  ", " ")
                        })
                        .unwrap_or_default(),
                ]
            })
            .collect()
    }
}

#[derive(Serialize)]
struct MembersView(Vec<MemberView>);

#[derive(Serialize)]
struct MemberView {
    id: String,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    learner: bool,
}

impl From<proto::EtcdMembersReply> for MembersView {
    fn from(r: proto::EtcdMembersReply) -> Self {
        MembersView(
            r.members
                .into_iter()
                .map(|m| MemberView {
                    id: format!("{:x}", m.id),
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    learner: m.is_learner,
                })
                .collect(),
        )
    }
}

impl Tabular for MembersView {
    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "PEER URLS", "CLIENT URLS", "LEARNER"]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        self.0
            .iter()
            .map(|m| {
                vec![
                    m.id.clone(),
                    m.name.clone(),
                    m.peer_urls.join(","),
                    m.client_urls.join(","),
                    m.learner.to_string(),
                ]
            })
            .collect()
    }
}

#[derive(Serialize)]
struct EtcdStatusView {
    member_id: String,
    leader: String,
    version: String,
    db_size: i64,
    db_size_in_use: i64,
    raft_index: u64,
    raft_term: u64,
    errors: Vec<String>,
}

impl From<proto::EtcdStatusReply> for EtcdStatusView {
    fn from(s: proto::EtcdStatusReply) -> Self {
        EtcdStatusView {
            member_id: format!("{:x}", s.member_id),
            leader: format!("{:x}", s.leader),
            version: s.version,
            db_size: s.db_size,
            db_size_in_use: s.db_size_in_use,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            errors: s.errors,
        }
    }
}

impl Tabular for EtcdStatusView {
    fn headers() -> &'static [&'static str] {
        &[
            "MEMBER",
            "LEADER",
            "VERSION",
            "DB SIZE",
            "IN USE",
            "RAFT INDEX",
            "RAFT TERM",
            "ERRORS",
        ]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        let size = |n: i64| output::bytes(u64::try_from(n).unwrap_or(0));
        vec![vec![
            self.member_id.clone(),
            self.leader.clone(),
            self.version.clone(),
            size(self.db_size),
            size(self.db_size_in_use),
            self.raft_index.to_string(),
            self.raft_term.to_string(),
            self.errors.join("; "),
        ]]
    }
}

#[derive(Serialize)]
struct GitopsView {
    url: String,
    applied: String,
    seen: String,
    last_healthy: String,
    health: String,
    suspended: bool,
    objects: u64,
    leader: String,
    last_error: String,
    history: Vec<(String, String, String, String)>,
}

impl From<proto::GitOpsStatusReply> for GitopsView {
    fn from(s: proto::GitOpsStatusReply) -> Self {
        GitopsView {
            url: s.url,
            applied: s.applied_revision,
            seen: s.seen_revision,
            last_healthy: s.last_healthy_revision,
            health: s.health,
            suspended: s.suspended,
            objects: s.objects,
            leader: s.leader,
            last_error: s.last_error,
            history: s
                .history
                .into_iter()
                .map(|e| (e.time, e.revision, e.result, e.message))
                .collect(),
        }
    }
}

impl Tabular for GitopsView {
    fn headers() -> &'static [&'static str] {
        &[
            "APPLIED",
            "SEEN",
            "HEALTH",
            "SUSPENDED",
            "OBJECTS",
            "LEADER",
            "LAST ERROR",
        ]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        let short = |r: &str| r.chars().take(12).collect::<String>();
        vec![vec![
            short(&self.applied),
            short(&self.seen),
            self.health.clone(),
            self.suspended.to_string(),
            self.objects.to_string(),
            self.leader.clone(),
            self.last_error.clone(),
        ]]
    }
}

#[derive(Serialize)]
struct ApplyView {
    changed: bool,
    message: String,
    diff: String,
}

impl From<proto::ConfigApplyReply> for ApplyView {
    fn from(r: proto::ConfigApplyReply) -> Self {
        ApplyView {
            changed: r.changed,
            message: r.message,
            diff: r.diff,
        }
    }
}

impl Tabular for ApplyView {
    fn headers() -> &'static [&'static str] {
        &["CHANGED", "MESSAGE"]
    }
    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = vec![vec![self.changed.to_string(), self.message.clone()]];
        if !self.diff.is_empty() {
            rows.push(vec![String::new(), String::new()]);
            rows.extend(self.diff.lines().map(|l| vec![String::new(), l.to_owned()]));
        }
        rows
    }
}
