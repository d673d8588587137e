//! The single-node Kubernetes acceptance, on the real image under QEMU (TCG), driven
//! through the machine API (`cairnctl`) and kubectl: every component comes up under
//! the init and `cairnctl services` shows it ready, the node turns Ready, kubectl
//! with the kubeconfig from `cairnctl kubeconfig` sees it, a Deployment + ClusterIP
//! Service of our web server work from a pod (by DNS name, through CoreDNS) and
//! from the node's own network, `cairnctl logs -f etcd` streams, every component
//! killed with SIGKILL (`cairnctl service kill`) comes back, `cairnctl restart
//! kubelet` brings the node Ready again, `cairnctl reboot` keeps the cluster's
//! objects, and a poweroff lets the pods stop gracefully first.
//!
//! One VM carries the whole scenario: a boot to a Ready node costs minutes under
//! TCG, so the steps share it, in order, and each prints what it measured.

use std::time::{Duration, Instant};

use std::io::Read as _;
use std::sync::{Arc, Mutex};

use cairn_e2e::{
    CLUSTER_TIMEOUT, COMPONENTS, Cairnctl, Kubectl, NODE_NAME, fresh_disk, node_config, vm_slot,
};
use cairn_qemu::{ConsoleLine, Vm};

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: web
        image: cairn.local/webtest:v1
        imagePullPolicy: Never
        args: [serve, --port, "8080", --term-file, /data/terminations.log]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes:
      - name: data
        hostPath: {path: /var/lib/cairn-e2e, type: DirectoryOrCreate}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// A pod fetching the Service by its short name (search list + CoreDNS) and by its
/// full name; it exits 0 only if both answers are 200.
const CLIENT_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: client, namespace: default}
spec:
  backoffLimit: 6
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: get
        image: cairn.local/webtest:v1
        imagePullPolicy: Never
        args: [get, "http://web/", --retries, "20", --retry-delay-ms, "1000"]
      - name: get-fqdn
        image: cairn.local/webtest:v1
        imagePullPolicy: Never
        args: [get, "http://web.default.svc.cluster.local/", --retries, "20", --retry-delay-ms, "1000"]
"#;

/// Waits for an event anywhere after console line `since` (components become
/// ready in no fixed order).
fn wait_event_since(
    vm: &Vm,
    since: usize,
    event: &str,
    fields: &[(&str, &str)],
    timeout: Duration,
) -> ConsoleLine {
    vm.set_cursor(since);
    wait_event(vm, event, fields, timeout)
}

fn wait_event(vm: &Vm, event: &str, fields: &[(&str, &str)], timeout: Duration) -> ConsoleLine {
    vm.wait_for_event(event, fields, timeout)
        .unwrap_or_else(|e| {
            panic!(
                "waiting for {event} {fields:?}: {e}\n--- console tail ---\n{}",
                vm.console_tail(80)
            )
        })
}

/// An HTTP GET from the node's own network namespace (a hostNetwork Job running
/// our web client) to `ip:80`, retried for up to a minute: kube-proxy programs a
/// Service's rules shortly after its endpoints turn ready. Returns the body.
fn node_get(k: &Kubectl, vm: &Vm, job: &str, ip: &str, path: &str) -> String {
    let manifest = format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {job}, namespace: default}}
spec:
  backoffLimit: 0
  template:
    spec:
      hostNetwork: true
      restartPolicy: Never
      containers:
      - name: get
        image: cairn.local/webtest:v1
        imagePullPolicy: Never
        args: [get, "http://{ip}:80{path}", --retries, "30", --retry-delay-ms, "2000"]
"#,
        ip = ip.trim()
    );
    k.run_with_input(&["apply", "-f", "-"], Some(&manifest))
        .expect("apply the node-side client");
    k.wait_until(
        &["get", "job", job, "-o", "jsonpath={.status.succeeded}"],
        Duration::from_secs(180),
        |out| out.trim() == "1",
    )
    .unwrap_or_else(|e| {
        let logs = k.run(&["logs", &format!("job/{job}")]).unwrap_or_default();
        panic!(
            "GET {ip}:80{path} from the node: {e:#}\nlogs:\n{logs}\n--- console ---\n{}",
            vm.console_tail(40)
        )
    });
    k.run(&["logs", &format!("job/{job}")])
        .expect("node-side client logs")
}

/// `cairnctl logs -f <service>` running in the background, its output collected.
struct Follow {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Follow {
    fn start(ctl: &Cairnctl, service: &str) -> Follow {
        let mut child = ctl
            .command(&["logs", "-f", service])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cairnctl logs -f");
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Follow { child, out }
    }

    fn len(&self) -> usize {
        self.out.lock().expect("lock").len()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cairnctl services` shows every one of `names` ready.
fn wait_services_ready(ctl: &Cairnctl, names: &[&str], timeout: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let services = ctl.services();
        if let Ok(list) = &services
            && names.iter().all(|n| {
                list.iter()
                    .any(|(name, state)| name == n && state == "ready")
            })
        {
            return list.clone();
        }
        assert!(
            Instant::now() < deadline,
            "cairnctl services: not all of {names:?} ready: {services:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn node_ready(out: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with(NODE_NAME) && l.split_whitespace().nth(1) == Some("Ready"))
}

fn wait_node_ready(k: &Kubectl, vm: &Vm, timeout: Duration) {
    k.wait_until(&["get", "nodes", "--no-headers"], timeout, node_ready)
        .unwrap_or_else(|e| {
            panic!(
                "node Ready: {e:#}\n--- console ---\n{}",
                vm.console_tail(60)
            )
        });
}

fn ready_replicas(k: &Kubectl, ns: &str, deploy: &str) -> String {
    k.run(&[
        "get",
        "deploy",
        "-n",
        ns,
        deploy,
        "-o",
        "jsonpath={.status.readyReplicas}",
    ])
    .unwrap_or_default()
}

fn wait_deployment(
    k: &Kubectl,
    vm: &Vm,
    ns: &str,
    deploy: &str,
    replicas: &str,
    timeout: Duration,
) {
    k.wait_until(
        &["get", "deploy", "-n", ns, deploy, "-o", "jsonpath={.status.readyReplicas}"],
        timeout,
        |out| out.trim() == replicas,
    )
    .unwrap_or_else(|e| {
        let pods = k.run(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default();
        let events = k.run(&["get", "events", "-A"]).unwrap_or_default();
        panic!(
            "deployment {ns}/{deploy} not ready: {e:#}\npods:\n{pods}\nevents:\n{events}\n--- console ---\n{}",
            vm.console_tail(60)
        )
    });
}

#[test]
fn single_node_cluster_end_to_end() {
    let Some(_one) = vm_slot() else { return };
    let disk = fresh_disk();
    let mut vm = Vm::boot(&node_config(), &disk).expect("boot");

    // 1. Every component ready, then the node Ready; the timeline.
    let mut timeline = Vec::new();
    for c in COMPONENTS {
        let line = wait_event_since(&vm, 0, "ready", &[("service", c)], CLUSTER_TIMEOUT);
        timeline.push((format!("{c} ready"), vm.since_start(&line)));
    }
    let cni = wait_event_since(&vm, 0, "cni_configured", &[], CLUSTER_TIMEOUT);
    timeline.push(("pod network configured".into(), vm.since_start(&cni)));
    let objects = wait_event_since(&vm, 0, "cluster_objects_applied", &[], CLUSTER_TIMEOUT);
    timeline.push(("cluster objects applied".into(), vm.since_start(&objects)));
    timeline.sort_by_key(|(_, at)| *at);

    // `cairnctl services` lists every component (and the API server itself) ready.
    let ctl = Cairnctl::new(&vm);
    let mut all: Vec<&str> = COMPONENTS.to_vec();
    all.push("apid");
    let services = wait_services_ready(&ctl, &all, Duration::from_secs(60));
    eprintln!("{}", ctl.run(&["services"]).expect("cairnctl services"));
    assert!(services.len() > COMPONENTS.len(), "{services:?}");

    // 2. kubectl from the host, with the kubeconfig from `cairnctl kubeconfig`: the
    //    node and the system pods.
    let k = Kubectl::from_machine_api(&vm).expect("kubectl with cairnctl's kubeconfig");
    wait_node_ready(&k, &vm, CLUSTER_TIMEOUT);
    timeline.push((
        "node Ready (seen by kubectl)".into(),
        vm.started_at().elapsed(),
    ));
    wait_deployment(&k, &vm, "kube-system", "coredns", "1", CLUSTER_TIMEOUT);
    timeline.push(("CoreDNS pod ready".into(), vm.started_at().elapsed()));
    eprintln!("timeline (QEMU start = 0):");
    for (what, at) in &timeline {
        eprintln!("  {:>7.1}s  {what}", at.as_secs_f64());
    }
    let nodes = k.run(&["get", "nodes", "-o", "wide"]).expect("get nodes");
    eprintln!("{nodes}");
    assert!(nodes.contains("10.0.2.15"), "node IP: {nodes}");
    let pods = k
        .run(&["get", "pods", "-n", "kube-system", "--no-headers"])
        .expect("pods");
    assert!(
        pods.lines()
            .any(|l| l.starts_with("coredns-") && l.contains("Running")),
        "{pods}"
    );

    // 3. A Deployment and its Service, reached from a pod by name and from the node.
    let t = Instant::now();
    k.run_with_input(&["apply", "-f", "-"], Some(WORKLOAD))
        .expect("apply web");
    wait_deployment(&k, &vm, "default", "web", "2", CLUSTER_TIMEOUT);
    eprintln!(
        "web Deployment: 2 pods ready {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );
    k.run_with_input(&["apply", "-f", "-"], Some(CLIENT_JOB))
        .expect("apply client");
    k.wait_until(
        &["get", "job", "client", "-o", "jsonpath={.status.succeeded}"],
        Duration::from_secs(240),
        |out| out.trim() == "1",
    )
    .unwrap_or_else(|e| {
        let logs = k
            .run(&["logs", "job/client", "--all-containers"])
            .unwrap_or_default();
        let pods = k.run(&["get", "pods", "-o", "wide"]).unwrap_or_default();
        panic!("client job: {e:#}\nlogs:\n{logs}\npods:\n{pods}")
    });
    let logs = k
        .run(&["logs", "job/client", "--all-containers"])
        .expect("client logs");
    assert!(
        logs.contains("web-"),
        "the client got a web pod's name: {logs}"
    );
    let cluster_ip = k
        .run(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .expect("cluster ip");
    let from_node = node_get(&k, &vm, "node-get", &cluster_ip, "/");
    assert!(from_node.contains("web-"), "from the node: {from_node}");

    // 4. SIGKILL each component through the machine API; it comes back and the node
    //    is Ready again. `cairnctl logs -f etcd` streams etcd's restart.
    let follow = Follow::start(&ctl, "etcd");
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = follow.len();
    let mut recoveries = Vec::new();
    for c in COMPONENTS {
        vm.skip_to_end();
        let t = Instant::now();
        ctl.run(&["service", "kill", c, "--signal", "KILL"])
            .expect("cairnctl service kill");
        wait_event(&vm, "ready", &[("service", c)], Duration::from_secs(180));
        let back = t.elapsed();
        wait_node_ready(&k, &vm, Duration::from_secs(180));
        recoveries.push((c, back, t.elapsed()));
    }
    eprintln!("recovery after SIGKILL (component ready / node Ready again):");
    for (c, back, ready) in &recoveries {
        eprintln!(
            "  {c:<24} {:>6.1}s / {:>6.1}s",
            back.as_secs_f64(),
            ready.as_secs_f64()
        );
    }
    let streamed = follow.len() - before_kill;
    eprintln!("cairnctl logs -f etcd: {streamed} bytes streamed after etcd's restart");
    assert!(streamed > 0, "no etcd output streamed after the kill");
    drop(follow);

    // `cairnctl restart kubelet`: the node is Ready again.
    let t = Instant::now();
    ctl.run(&["restart", "kubelet"])
        .expect("cairnctl restart kubelet");
    wait_services_ready(&ctl, &["kubelet"], Duration::from_secs(120));
    wait_node_ready(&k, &vm, Duration::from_secs(180));
    eprintln!(
        "cairnctl restart kubelet -> node Ready again in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 5. `cairnctl reboot`: orderly; the cluster's objects stay, the pods come back.
    vm.skip_to_end();
    ctl.run(&["reboot"]).expect("cairnctl reboot");
    wait_event(&vm, "shutdown_done", &[], Duration::from_secs(180));
    let rebooted = vm.cursor();
    wait_event_since(
        &vm,
        rebooted,
        "ready",
        &[("service", "kubelet")],
        CLUSTER_TIMEOUT,
    );
    wait_event_since(&vm, rebooted, "cni_configured", &[], CLUSTER_TIMEOUT);
    let k = Kubectl::new(&vm).expect("kubectl");
    wait_node_ready(&k, &vm, CLUSTER_TIMEOUT);
    wait_deployment(&k, &vm, "default", "web", "2", CLUSTER_TIMEOUT);
    eprintln!(
        "after reboot: web has {} ready pods",
        ready_replicas(&k, "default", "web")
    );

    // 6. Poweroff: kubelet stops the pods gracefully before the machine goes down;
    //    their SIGTERM handlers' records are there at the next boot.
    let ip = k
        .run(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .expect("cluster ip");
    let records = node_get(&k, &vm, "terminations-before", &ip, "/terminations");
    let before = records.matches("graceful-termination").count();
    vm.skip_to_end();
    vm.powerdown().expect("powerdown");
    let drained = wait_event(&vm, "pods_drained", &[], Duration::from_secs(120));
    assert_eq!(drained.field("released"), Some("true"), "{}", drained.text);
    vm.wait_exit(Duration::from_secs(120))
        .expect("QEMU exits after poweroff");
    let vm = Vm::boot(&node_config(), &disk).expect("boot again");
    wait_event(&vm, "ready", &[("service", "kubelet")], CLUSTER_TIMEOUT);
    let k = Kubectl::new(&vm).expect("kubectl");
    wait_deployment(&k, &vm, "default", "web", "2", CLUSTER_TIMEOUT);
    let ip = k
        .run(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .expect("cluster ip");
    let records = node_get(&k, &vm, "terminations-after", &ip, "/terminations");
    let graceful = records.matches("graceful-termination").count();
    eprintln!("termination records after poweroff: {graceful} ({records})");
    assert!(
        graceful >= before + 2,
        "both web pods recorded a graceful stop at poweroff ({before} records before): {records}"
    );
}
