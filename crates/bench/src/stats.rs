//! What every scenario measures the same way: latency percentiles and a process's RSS.

use serde_json::{Value, json};

/// Count, p50, p95, p99 and max of `v` (milliseconds, three decimals).
pub(crate) fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"count": 0});
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({"count": v.len(), "p50": r(p(0.5)), "p95": r(p(0.95)), "p99": r(p(0.99)), "max": r(v[v.len() - 1])})
}

/// Resident set size of process `pid` in KiB (`None` when it is gone).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
