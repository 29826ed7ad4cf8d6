//! Latency histograms of `dynakv bench` (HDR histograms: fixed memory whatever the run length,
//! three significant digits) and the summary, as text or JSON.
//!
//! Only requests that got an answer are timed: failures (which may wait for a timeout) and
//! requests the node shed as overloaded are counted apart, never mixed into the percentiles.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::workload::Op;

/// Highest latency recorded, in microseconds (larger values are clamped to it): one minute.
const MAX_MICROS: u64 = 60_000_000;

/// One histogram per kind of operation, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    per_op: [Histogram<u64>; 4],
}

impl Latencies {
    /// Empty histograms.
    pub fn new() -> anyhow::Result<Self> {
        let h = Histogram::new_with_bounds(1, MAX_MICROS, 3)?;
        Ok(Latencies {
            per_op: [h.clone(), h.clone(), h.clone(), h],
        })
    }

    /// Records one answered request.
    pub fn record(&mut self, op: Op, micros: u64) {
        if let Some(h) = self.per_op.get_mut(op as usize) {
            h.saturating_record(micros.clamp(1, MAX_MICROS));
        }
    }

    /// Adds another worker's histograms.
    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.per_op.iter_mut().zip(&other.per_op) {
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.add(theirs);
        }
    }

    /// All operations together.
    fn all(&self) -> Histogram<u64> {
        let mut all = Histogram::new_from(&self.per_op[0]);
        for h in &self.per_op {
            let _ = all.add(h);
        }
        all
    }

    /// Percentiles in milliseconds: p50, p90, p99, p99.9 and the maximum.
    fn summary(h: &Histogram<u64>) -> Value {
        let ms = |v: u64| v as f64 / 1000.0;
        json!({
            "count": h.len(),
            "p50_ms": ms(h.value_at_quantile(0.50)),
            "p90_ms": ms(h.value_at_quantile(0.90)),
            "p99_ms": ms(h.value_at_quantile(0.99)),
            "p999_ms": ms(h.value_at_quantile(0.999)),
            "max_ms": ms(h.max()),
        })
    }

    /// The latency part of the JSON report: `all` plus one entry per operation that ran.
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("all".into(), Self::summary(&self.all()));
        for op in Op::ALL {
            if let Some(h) = self.per_op.get(op as usize).filter(|h| !h.is_empty()) {
                out.insert(op.name().into(), Self::summary(h));
            }
        }
        Value::Object(out)
    }

    /// p50, p99 and p99.9 of all operations, in milliseconds (for the summary line).
    pub fn headline(&self) -> (f64, f64, f64) {
        let all = self.all();
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        (ms(0.50), ms(0.99), ms(0.999))
    }

    /// One line per operation that ran: count and percentiles.
    pub fn per_op_lines(&self) -> Vec<String> {
        Op::ALL
            .iter()
            .filter_map(|&op| {
                let h = self.per_op.get(op as usize).filter(|h| !h.is_empty())?;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                Some(format!(
                    "  {:<17} {:>9} ok  p50 {:.2}  p90 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2} ms",
                    op.name(),
                    h.len(),
                    ms(0.5),
                    ms(0.9),
                    ms(0.99),
                    ms(0.999),
                    h.max() as f64 / 1000.0
                ))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_give_per_op_and_overall_percentiles() {
        let mut a = Latencies::new().unwrap();
        let mut b = Latencies::new().unwrap();
        for i in 1..=100 {
            a.record(Op::Read, i * 10); // 10 us .. 1 ms
            b.record(Op::Update, 1_000 + i * 100); // 1.1 .. 11 ms
        }
        a.merge(&b);
        let j = a.to_json();
        assert_eq!(j["all"]["count"], 200);
        assert_eq!(j["read"]["count"], 100);
        assert_eq!(j["update"]["count"], 100);
        assert!(j.get("insert").is_none());
        let read_p99 = j["read"]["p99_ms"].as_f64().unwrap();
        assert!((0.98..=1.0).contains(&read_p99), "{read_p99}");
        let (p50, p99, _) = a.headline();
        assert!(p50 <= 1.01 && p99 > 10.0, "{p50} {p99}");
        assert_eq!(a.per_op_lines().len(), 2);
        // Out-of-range values are clamped, not lost.
        a.record(Op::Insert, u64::MAX);
        assert_eq!(a.to_json()["insert"]["count"], 1);
    }
}
