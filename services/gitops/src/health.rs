//! Per-kind health, judged from a live object's status (from the watch cache, so
//! waiting for health sends no requests). There is no kstatus for Rust; these
//! are the rules a Kubernetes user expects of each kind.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not there yet; the reason says what is missing.
    Progressing(String),
    /// Will not get there by waiting.
    Failed(String),
}

fn int(v: &Value, path: &[&str]) -> i64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_true(v: &Value, kind: &str) -> bool {
    condition(v, kind).is_some_and(|c| c["status"] == "True")
}

/// Has the controller seen the latest spec?
fn observed(v: &Value) -> Result<(), Health> {
    let generation = int(v, &["metadata", "generation"]);
    let observed = int(v, &["status", "observedGeneration"]);
    if observed < generation {
        return Err(Health::Progressing(format!(
            "generation {generation} not yet observed (at {observed})"
        )));
    }
    Ok(())
}

fn replicas(v: &Value, ready_field: &str, want: i64) -> Health {
    let updated = int(v, &["status", "updatedReplicas"]);
    let ready = int(v, &["status", ready_field]);
    if updated < want || ready < want {
        Health::Progressing(format!("{ready}/{want} ready, {updated}/{want} updated"))
    } else {
        Health::Healthy
    }
}

/// The health of a live object of `group`/`kind`. Kinds without a rule are
/// healthy once they exist.
pub fn assess(group: &str, kind: &str, live: &Value) -> Health {
    let checked = match (group, kind) {
        ("apps", "Deployment") => observed(live).map(|()| {
            if let Some(c) = condition(live, "Progressing")
                && c["reason"] == "ProgressDeadlineExceeded"
            {
                return Health::Failed(format!(
                    "progress deadline exceeded: {}",
                    c["message"].as_str().unwrap_or("")
                ));
            }
            let want = live
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            replicas(live, "availableReplicas", want)
        }),
        ("apps", "StatefulSet") => observed(live).map(|()| {
            let want = live
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            replicas(live, "readyReplicas", want)
        }),
        ("apps", "DaemonSet") => observed(live).map(|()| {
            let want = int(live, &["status", "desiredNumberScheduled"]);
            let ready = int(live, &["status", "numberReady"]);
            let updated = int(live, &["status", "updatedNumberScheduled"]);
            if ready < want || updated < want {
                Health::Progressing(format!("{ready}/{want} ready, {updated}/{want} updated"))
            } else {
                Health::Healthy
            }
        }),
        ("batch", "Job") => Ok(if condition_true(live, "Failed") {
            Health::Failed(
                condition(live, "Failed")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("job failed")
                    .to_string(),
            )
        } else if condition_true(live, "Complete") {
            Health::Healthy
        } else {
            Health::Progressing("not complete".into())
        }),
        ("", "Pod") => Ok(
            match live.pointer("/status/phase").and_then(Value::as_str) {
                Some("Succeeded") => Health::Healthy,
                Some("Running") if condition_true(live, "Ready") => Health::Healthy,
                Some("Failed") => Health::Failed("pod failed".into()),
                phase => Health::Progressing(format!("phase {}", phase.unwrap_or("unknown"))),
            },
        ),
        ("", "PersistentVolumeClaim") => Ok(
            match live.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Health::Healthy,
                Some("Lost") => Health::Failed("claim lost its volume".into()),
                phase => Health::Progressing(format!("phase {}", phase.unwrap_or("Pending"))),
            },
        ),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            Ok(if condition_true(live, "Established") {
                Health::Healthy
            } else {
                Health::Progressing("not established".into())
            })
        }
        ("", "Service") if live.pointer("/spec/type") == Some(&Value::from("LoadBalancer")) => {
            let ingress = live
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .is_some_and(|i| !i.is_empty());
            Ok(if ingress {
                Health::Healthy
            } else {
                Health::Progressing("no load-balancer address yet".into())
            })
        }
        _ => Ok(Health::Healthy),
    };
    checked.unwrap_or_else(|h| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments() {
        let d = |generation: i64, obs: i64, avail: i64| {
            json!({"metadata": {"generation": generation}, "spec": {"replicas": 2},
                   "status": {"observedGeneration": obs, "updatedReplicas": 2, "availableReplicas": avail}})
        };
        assert_eq!(assess("apps", "Deployment", &d(2, 2, 2)), Health::Healthy);
        assert!(matches!(
            assess("apps", "Deployment", &d(3, 2, 2)),
            Health::Progressing(_)
        ));
        assert!(matches!(
            assess("apps", "Deployment", &d(2, 2, 1)),
            Health::Progressing(_)
        ));
        let zero = json!({"metadata": {"generation": 1}, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}});
        assert_eq!(assess("apps", "Deployment", &zero), Health::Healthy);
        let stuck = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {"observedGeneration": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}]}});
        assert!(matches!(
            assess("apps", "Deployment", &stuck),
            Health::Failed(_)
        ));
    }

    #[test]
    fn jobs_pods_claims_crds_and_others() {
        let job = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "message": "backoff"}]}});
        assert_eq!(
            assess("batch", "Job", &job),
            Health::Failed("backoff".into())
        );
        let pod = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(assess("", "Pod", &pod), Health::Healthy);
        assert!(matches!(
            assess(
                "",
                "PersistentVolumeClaim",
                &json!({"status": {"phase": "Pending"}})
            ),
            Health::Progressing(_)
        ));
        let crd = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(
            assess("apiextensions.k8s.io", "CustomResourceDefinition", &crd),
            Health::Healthy
        );
        let lb = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        assert!(matches!(assess("", "Service", &lb), Health::Progressing(_)));
        assert_eq!(assess("", "ConfigMap", &json!({})), Health::Healthy);
    }
}
