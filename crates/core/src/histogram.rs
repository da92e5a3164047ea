//! A Prometheus histogram kept in atomics: recording is a few relaxed adds
//! (no lock on the request path), rendering reads a consistent-enough view.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bucket bounds for durations in seconds: 0.5 ms to 10 s.
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds for counts of things (events in a commit).
pub const COUNTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the `+Inf` bucket; not cumulative.
    buckets: Vec<AtomicU64>,
    /// The sum in millionths, so it fits an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let micros = (value.max(0.0) * 1e6) as u64;
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub fn observe_duration(&self, elapsed: std::time::Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` with the
    /// given labels (`key="value"` pairs, already escaped; may be empty).
    /// The `# TYPE` line is the caller's, once per metric name.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
pub fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_counts() {
        let h = Histogram::new(SECONDS);
        for v in [0.0001, 0.003, 0.003, 7.0, 60.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "route=\"/a\"");
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.0025\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"0.005\"} 3\n"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"10\"} 4\n"));
        assert!(out.contains("x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_seconds_count{route=\"/a\"} 5\n"));
        assert!(
            out.contains("x_seconds_sum{route=\"/a\"} 67.0061\n"),
            "{out}"
        );
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
