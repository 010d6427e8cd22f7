//! Latency percentiles of a host's statements, from mergeable DDSketches: statement latency,
//! time to the first result, and CloudFetch chunk download latency. Recorded by the
//! background task as it folds each statement's end (nothing on the driver's thread), within
//! a bounded memory (at most 2,048 bins a sketch, each value within 1 % of the truth).

use std::fmt;
use std::time::Duration;

use sketches_ddsketch::{Config, DDSketch};
use telemetry_types::event::StatementEnd;

/// p50, p95 and p99 of one latency, with the number of values they summarise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// The percentiles of a host's (or a provider's) latencies; `None` where nothing was
/// recorded yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyPercentiles {
    /// Each statement's latency, begin to end (every outcome).
    pub statement: Option<Percentiles>,
    /// Time from a statement's begin to its first result (`result_ready`).
    pub first_result: Option<Percentiles>,
    /// CloudFetch chunk download latency: each statement's mean over its chunks.
    pub chunk: Option<Percentiles>,
}

/// The sketches behind [`LatencyPercentiles`]; mergeable across hosts.
#[derive(Clone)]
pub struct Latencies {
    statement: DDSketch,
    first_result: DDSketch,
    chunk: DDSketch,
}

impl fmt::Debug for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latencies")
            .field("percentiles", &self.percentiles())
            .finish()
    }
}

impl Default for Latencies {
    fn default() -> Self {
        // 1 % relative error, at most 2,048 bins (about 32 KiB) a sketch; values in ms.
        let config = Config::new(0.01, 2048, 1e-3);
        Self {
            statement: DDSketch::new(config),
            first_result: DDSketch::new(config),
            chunk: DDSketch::new(config),
        }
    }
}

impl Latencies {
    /// Records one statement's end.
    pub fn record(&mut self, end: &StatementEnd) {
        self.statement.add(end.latency_ms as f64);
        if let Some(ms) = end.completion.result_ready_latency_ms {
            self.first_result.add(ms as f64);
        }
        let chunks = &end.chunks;
        if chunks.iterated > 0 {
            self.chunk
                .add(chunks.sum_latency_ms.max(0) as f64 / f64::from(chunks.iterated));
        }
    }

    /// Adds `other`'s values to these.
    pub fn merge(&mut self, other: &Latencies) {
        // Same configuration on both sides: merging cannot fail.
        let _ = self.statement.merge(&other.statement);
        let _ = self.first_result.merge(&other.first_result);
        let _ = self.chunk.merge(&other.chunk);
    }

    /// The percentiles now.
    pub fn percentiles(&self) -> LatencyPercentiles {
        LatencyPercentiles {
            statement: of(&self.statement),
            first_result: of(&self.first_result),
            chunk: of(&self.chunk),
        }
    }
}

fn of(sketch: &DDSketch) -> Option<Percentiles> {
    let count = sketch.count() as u64;
    if count == 0 {
        return None;
    }
    let at = |q: f64| {
        let ms = sketch.quantile(q).ok().flatten().unwrap_or(0.0);
        // Finite and non-negative by construction (latencies in ms); clamped regardless.
        Duration::from_secs_f64((ms.max(0.0) / 1000.0).min(1e9))
    };
    Some(Percentiles {
        count,
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_types::event::{ChunkStats, StatementCompletion, StatementOutcome};
    use telemetry_types::wire::{OperationType, StatementType};

    fn end(latency_ms: u64, first_ms: Option<u64>, chunks: u32, chunk_sum_ms: i64) -> StatementEnd {
        StatementEnd {
            statement_type: StatementType::Query,
            operation_type: OperationType::ExecuteStatement,
            statement_id: None,
            latency_ms,
            outcome: StatementOutcome::Completed,
            chunks: ChunkStats {
                iterated: chunks,
                sum_latency_ms: chunk_sum_ms,
                ..ChunkStats::default()
            },
            completion: StatementCompletion {
                result_ready_latency_ms: first_ms,
                ..StatementCompletion::default()
            },
            error: None,
            volume: None,
        }
    }

    fn close(got: Duration, want_ms: f64) -> bool {
        (got.as_secs_f64() * 1000.0 - want_ms).abs() <= want_ms * 0.02 + 0.01
    }

    #[test]
    fn percentiles_are_within_the_sketchs_error_and_merge_across_hosts() {
        let (mut a, mut b) = (Latencies::default(), Latencies::default());
        for ms in 1..=100u64 {
            let l = if ms % 2 == 0 { &mut a } else { &mut b };
            l.record(&end(ms, Some(ms / 2), 4, (ms * 4) as i64));
        }
        assert_eq!(
            Latencies::default().percentiles(),
            LatencyPercentiles::default()
        );
        a.merge(&b);
        let p = a.percentiles();
        let s = p.statement.unwrap();
        assert_eq!(s.count, 100);
        assert!(
            close(s.p50, 50.0) && close(s.p95, 95.0) && close(s.p99, 99.0),
            "{s:?}"
        );
        let c = p.chunk.unwrap();
        assert!(close(c.p50, 50.0), "mean chunk latency: {c:?}");
        assert_eq!(p.first_result.unwrap().count, 100);
    }

    #[test]
    fn statements_without_chunks_or_results_leave_those_empty() {
        let mut l = Latencies::default();
        l.record(&end(0, None, 0, 0));
        let p = l.percentiles();
        assert_eq!(p.statement.unwrap().p50, Duration::ZERO);
        assert_eq!((p.first_result, p.chunk), (None, None));
    }
}
