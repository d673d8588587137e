//! The reconciler's metrics in the Prometheus text exposition format
//! (version 0.0.4), written by hand: a few counters, gauges and one histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the reconcile duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Reconcile results shown (at zero) before any happened.
const RESULTS: [&str; 3] = ["success", "failed", "refused"];
/// Error kinds shown (at zero) before any happened.
const ERROR_KINDS: [&str; 5] = ["source", "render", "apply", "health", "prune"];

/// The reconciler's counters; shared by the loop (writes) and the HTTP server (reads).
#[derive(Debug)]
pub struct Metrics {
    /// Reconcile durations by result; `_count` doubles as `reconciles_total`.
    reconciles: Mutex<BTreeMap<String, Histogram>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The revision last applied, for the info metric.
    revision: Mutex<Option<String>>,
    applied: AtomicU64,
    pruned: AtomicU64,
    /// `f64` bits of the last applied time (unix seconds).
    last_applied: AtomicU64,
    managed: AtomicU64,
    webhook_accepted: AtomicU64,
    webhook_rejected: AtomicU64,
}

/// One label set's histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All counters at zero; the known label values are present from the start.
    pub fn new() -> Metrics {
        Metrics {
            reconciles: Mutex::new(zeroed(&RESULTS)),
            errors: Mutex::new(zeroed(&ERROR_KINDS)),
            revision: Mutex::new(None),
            applied: AtomicU64::new(0),
            pruned: AtomicU64::new(0),
            last_applied: AtomicU64::new(0f64.to_bits()),
            managed: AtomicU64::new(0),
            webhook_accepted: AtomicU64::new(0),
            webhook_rejected: AtomicU64::new(0),
        }
    }

    /// One reconcile ended: `result` is `success`, `failed` or `refused`.
    pub fn reconcile_finished(&self, duration: Duration, result: &str) {
        let seconds = duration.as_secs_f64();
        let mut reconciles = lock(&self.reconciles);
        let h = reconciles.entry(result.to_owned()).or_default();
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| seconds <= *le) {
            h.buckets[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// `n` objects were applied (created or changed).
    pub fn objects_applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` objects were deleted because the repository no longer has them.
    pub fn objects_pruned(&self, n: u64) {
        self.pruned.fetch_add(n, Ordering::Relaxed);
    }

    /// A reconcile stage failed: `source`, `render`, `apply`, `health` or `prune`.
    pub fn error(&self, kind: &str) {
        *lock(&self.errors).entry(kind.to_owned()).or_default() += 1;
    }

    /// A revision was applied completely at `unix_time` (seconds).
    pub fn applied(&self, revision: &str, unix_time: f64) {
        self.last_applied
            .store(unix_time.to_bits(), Ordering::Relaxed);
        *lock(&self.revision) = Some(revision.to_owned());
    }

    /// How many objects the reconciler manages now.
    pub fn managed_objects(&self, n: u64) {
        self.managed.store(n, Ordering::Relaxed);
    }

    /// A webhook call was verified (`true`) or refused.
    pub fn webhook(&self, accepted: bool) {
        let counter = if accepted {
            &self.webhook_accepted
        } else {
            &self.webhook_rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reconciles = lock(&self.reconciles).clone();

        let name = "cairn_gitops_reconcile_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "How long reconciles took, by result.",
        );
        for (result, h) in &reconciles {
            let result = escape(result);
            let mut cumulative = 0;
            for (le, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                line(
                    &mut out,
                    &format!("{name}_bucket{{result=\"{result}\",le=\"{le}\"}}"),
                    cumulative,
                );
            }
            line(
                &mut out,
                &format!("{name}_bucket{{result=\"{result}\",le=\"+Inf\"}}"),
                h.count,
            );
            line(
                &mut out,
                &format!("{name}_sum{{result=\"{result}\"}}"),
                h.sum,
            );
            line(
                &mut out,
                &format!("{name}_count{{result=\"{result}\"}}"),
                h.count,
            );
        }

        let name = "cairn_gitops_reconciles_total";
        header(&mut out, name, "counter", "Reconciles finished, by result.");
        for (result, h) in &reconciles {
            line(
                &mut out,
                &format!("{name}{{result=\"{}\"}}", escape(result)),
                h.count,
            );
        }

        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            header(out, name, "counter", help);
            line(out, name, value.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "cairn_gitops_objects_applied_total",
            "Objects applied (created or changed).",
            &self.applied,
        );
        counter(
            &mut out,
            "cairn_gitops_objects_pruned_total",
            "Objects deleted because the repository dropped them.",
            &self.pruned,
        );

        let name = "cairn_gitops_errors_total";
        header(
            &mut out,
            name,
            "counter",
            "Reconcile errors, by the stage that failed.",
        );
        for (kind, n) in lock(&self.errors).iter() {
            line(
                &mut out,
                &format!("{name}{{kind=\"{}\"}}", escape(kind)),
                *n,
            );
        }

        let name = "cairn_gitops_last_applied_timestamp_seconds";
        header(
            &mut out,
            name,
            "gauge",
            "When a revision was last applied completely (unix time).",
        );
        line(
            &mut out,
            name,
            f64::from_bits(self.last_applied.load(Ordering::Relaxed)),
        );

        let name = "cairn_gitops_revision_info";
        header(
            &mut out,
            name,
            "gauge",
            "The revision last applied, as a label.",
        );
        if let Some(revision) = lock(&self.revision).as_deref() {
            line(
                &mut out,
                &format!("{name}{{revision=\"{}\"}}", escape(revision)),
                1,
            );
        }

        let name = "cairn_gitops_managed_objects";
        header(&mut out, name, "gauge", "Objects the reconciler manages.");
        line(&mut out, name, self.managed.load(Ordering::Relaxed));

        let name = "cairn_gitops_api_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "Requests sent to the API server (watches not counted), by verb.",
        );
        for (verb, n) in [
            ("read", &crate::cluster::READS),
            ("write", &crate::cluster::WRITES),
        ] {
            line(
                &mut out,
                &format!("{name}{{verb=\"{verb}\"}}"),
                n.load(Ordering::Relaxed),
            );
        }

        let name = "cairn_gitops_webhook_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "Webhook calls, by whether they were verified.",
        );
        line(
            &mut out,
            &format!("{name}{{result=\"accepted\"}}"),
            self.webhook_accepted.load(Ordering::Relaxed),
        );
        line(
            &mut out,
            &format!("{name}{{result=\"rejected\"}}"),
            self.webhook_rejected.load(Ordering::Relaxed),
        );
        out
    }
}

/// A map with every key at its default value.
fn zeroed<V: Default>(keys: &[&str]) -> BTreeMap<String, V> {
    keys.iter().map(|k| (k.to_string(), V::default())).collect()
}

/// A poisoned lock still holds usable numbers; metrics never give up on one.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(out: &mut String, series: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{series} {value}");
}

/// A label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (workspace lint `unwrap_used`)
mod tests {
    use super::*;

    /// A sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// One sample line split into name, labels and value; panics on anything malformed.
    fn parse(line: &str) -> Sample {
        let (series, value) = line.rsplit_once(' ').expect("no value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("unclosed labels");
                let labels = body
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label without =\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        (name.to_owned(), labels, value)
    }

    fn samples(m: &Metrics) -> Vec<Sample> {
        let text = m.render();
        let mut typed = Vec::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with("# HELP ") {
                let sample = parse(line);
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| sample.0.strip_suffix(s))
                    .filter(|b| typed.iter().any(|t| t == b))
                    .unwrap_or(&sample.0);
                assert_eq!(
                    typed.last().map(String::as_str),
                    Some(base),
                    "sample before its TYPE: {line}"
                );
                out.push(sample);
            }
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .2
    }

    #[test]
    fn starts_at_zero_with_known_labels() {
        let s = samples(&Metrics::new());
        assert_eq!(
            value(
                &s,
                "cairn_gitops_reconciles_total",
                &[("result", "refused")]
            ),
            0.0
        );
        assert_eq!(
            value(&s, "cairn_gitops_errors_total", &[("kind", "prune")]),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "cairn_gitops_webhook_requests_total",
                &[("result", "rejected")]
            ),
            0.0
        );
        assert!(!s.iter().any(|(n, _, _)| n == "cairn_gitops_revision_info"));
        // The process-wide request counters, whatever other tests sent.
        value(&s, "cairn_gitops_api_requests_total", &[("verb", "read")]);
        value(&s, "cairn_gitops_api_requests_total", &[("verb", "write")]);
    }

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let m = Metrics::new();
        for ms in [10, 70, 70, 3_000, 120_000] {
            m.reconcile_finished(Duration::from_millis(ms), "success");
        }
        m.reconcile_finished(Duration::from_millis(200), "failed");
        let s = samples(&m);
        let name = "cairn_gitops_reconcile_duration_seconds_bucket";
        let buckets: Vec<_> = s
            .iter()
            .filter(|(n, l, _)| n == name && l[0] == ("result".into(), "success".into()))
            .map(|(_, l, v)| (l[1].1.clone(), *v))
            .collect();
        let les: Vec<_> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(
            les,
            [
                "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "+Inf"
            ]
        );
        let counts: Vec<_> = buckets.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            counts,
            [1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 5.0]
        );
        let sum = value(
            &s,
            "cairn_gitops_reconcile_duration_seconds_sum",
            &[("result", "success")],
        );
        assert!((sum - 123.15).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                &s,
                "cairn_gitops_reconcile_duration_seconds_count",
                &[("result", "success")]
            ),
            5.0
        );
        assert_eq!(
            value(
                &s,
                "cairn_gitops_reconcile_duration_seconds_count",
                &[("result", "failed")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "cairn_gitops_reconciles_total",
                &[("result", "success")]
            ),
            5.0
        );
    }

    #[test]
    fn counters_gauges_and_info() {
        let m = Metrics::new();
        m.objects_applied(3);
        m.objects_applied(2);
        m.objects_pruned(1);
        m.error("apply");
        m.error("apply");
        m.error("odd\"kind");
        m.applied("main@1a2b3c", 1_700_000_000.5);
        m.managed_objects(42);
        m.webhook(true);
        m.webhook(false);
        m.webhook(false);
        let s = samples(&m);
        assert_eq!(value(&s, "cairn_gitops_objects_applied_total", &[]), 5.0);
        assert_eq!(value(&s, "cairn_gitops_objects_pruned_total", &[]), 1.0);
        assert_eq!(
            value(&s, "cairn_gitops_errors_total", &[("kind", "apply")]),
            2.0
        );
        assert_eq!(
            value(&s, "cairn_gitops_errors_total", &[("kind", "odd\\\"kind")]),
            1.0
        );
        assert_eq!(
            value(&s, "cairn_gitops_last_applied_timestamp_seconds", &[]),
            1_700_000_000.5
        );
        assert_eq!(
            value(
                &s,
                "cairn_gitops_revision_info",
                &[("revision", "main@1a2b3c")]
            ),
            1.0
        );
        assert_eq!(value(&s, "cairn_gitops_managed_objects", &[]), 42.0);
        assert_eq!(
            value(
                &s,
                "cairn_gitops_webhook_requests_total",
                &[("result", "accepted")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "cairn_gitops_webhook_requests_total",
                &[("result", "rejected")]
            ),
            2.0
        );
        m.applied("main@4d5e6f", 1_700_000_100.0);
        let text = m.render();
        assert_eq!(
            text.matches("cairn_gitops_revision_info{").count(),
            1,
            "{text}"
        );
        assert!(text.contains("cairn_gitops_revision_info{revision=\"main@4d5e6f\"} 1\n"));
    }
}
