//! The control socket in front of a REAL supervisor running real processes.

use std::time::Duration;

use cairn_control::{Client, PowerAction, RefusalKind, ServeConfig, serve};
use cairn_supervisor::{ServiceSpec, SupervisorConfig};

fn ticker(name: &str) -> ServiceSpec {
    ServiceSpec::new(name, "/bin/sh").args([
        "-c",
        "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ])
}

/// The tick numbers in a piece of log.
fn ticks(log: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_logs_follow_restart_signal_and_power() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("control.sock");
    let supervisor = cairn_supervisor::spawn(SupervisorConfig::default());
    cairn_supervisor::spawn_reaper(supervisor.clone());
    supervisor.add(vec![ticker("ticker")]).await.expect("add");
    let (power_tx, mut power_rx) = tokio::sync::mpsc::unbounded_channel();
    serve(
        ServeConfig {
            socket: socket.clone(),
            cgroup_root: None,
        },
        supervisor.clone(),
        power_tx,
    )
    .expect("serve");
    let mode = std::fs::metadata(&socket).expect("socket").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let client = Client::new(&socket);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let services = client.services().await.expect("services");
    assert_eq!(services.len(), 1);
    let s = &services[0];
    assert_eq!((s.name.as_str(), s.state.as_str()), ("ticker", "ready"));
    assert!(
        s.pid.is_some() && s.events.iter().any(|e| e.kind == "started"),
        "{s:?}"
    );

    // The tail: exactly the last 2 lines.
    let mut tail = client.logs("ticker", Some(2), false).await.expect("logs");
    let mut got = Vec::new();
    while let Some(chunk) = tail.next_chunk().await.expect("chunk") {
        got.extend(chunk);
    }
    assert_eq!(ticks(&got).len(), 2, "{}", String::from_utf8_lossy(&got));

    // Follow: lines written after the call arrive.
    let mut follow = client.logs("ticker", Some(1), true).await.expect("follow");
    let first = ticks(&follow.next_chunk().await.expect("chunk").expect("some"));
    let seen = *first.last().expect("one line");
    let later = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let chunk = follow.next_chunk().await.expect("chunk").expect("open");
            if let Some(&n) = ticks(&chunk).iter().max()
                && n > seen + 2
            {
                return n;
            }
        }
    })
    .await
    .expect("new lines within 5 s");
    assert!(later > seen);

    // Restart: a new pid; a signal with an unknown name is refused by name.
    let pid = s.pid;
    client.restart("ticker").await.expect("restart");
    let after = client.services().await.expect("services");
    assert_ne!(after[0].pid, pid);
    assert_eq!(after[0].restarts, 1);
    match client.signal("ticker", "BOGUS").await {
        Err(cairn_control::Error::Refused { kind, message }) => {
            assert_eq!(kind, RefusalKind::Invalid);
            assert!(message.contains("BOGUS"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match client.stop("nope").await {
        Err(cairn_control::Error::Refused { kind, .. }) => assert_eq!(kind, RefusalKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
    client.signal("ticker", "kill").await.expect("kill");

    client.power(PowerAction::Poweroff).await.expect("power");
    assert_eq!(power_rx.recv().await, Some(PowerAction::Poweroff));
    supervisor.shutdown().await;
}
