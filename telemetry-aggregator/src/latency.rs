//! Latency percentiles of a host's statements, from mergeable DDSketches: statement latency,
//! time to the first result, and CloudFetch chunk download latency. Recorded by the
//! background task as it folds each statement's end (nothing on the driver's thread): counted
//! by value during a drain slice ([`PendingLatencies`]) and added to the sketches when the
//! slice ends, within a bounded memory (at most 2,048 bins a sketch, each value within 1 % of
//! the truth).

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

/// The values one statement's end gives each sketch: its latency, its time to the first
/// result, its chunks' mean download time.
fn values(end: &StatementEnd) -> (f64, Option<f64>, Option<f64>) {
    let chunks = &end.chunks;
    (
        end.latency_ms as f64,
        end.completion.result_ready_latency_ms.map(|ms| ms as f64),
        (chunks.iterated > 0)
            .then(|| chunks.sum_latency_ms.max(0) as f64 / f64::from(chunks.iterated)),
    )
}

impl Latencies {
    /// Records one statement's end.
    pub fn record(&mut self, end: &StatementEnd) {
        let (statement, first_result, chunk) = values(end);
        self.statement.add(statement);
        if let Some(ms) = first_result {
            self.first_result.add(ms);
        }
        if let Some(ms) = chunk {
            self.chunk.add(ms);
        }
    }

    /// Records what `pending` counted, and empties it.
    pub(crate) fn take(&mut self, pending: &mut PendingLatencies) {
        pending.statement.drain_into(&mut self.statement);
        pending.first_result.drain_into(&mut self.first_result);
        pending.chunk.drain_into(&mut self.chunk);
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

/// Distinct values a [`PendingLatencies`] holds a sketch before it must be handed over.
const MAX_DISTINCT: usize = 32;

/// The latencies of the statements one drain slice folds, counted by value before they go
/// into the sketches ([`Latencies::take`], once a slice): latencies are whole milliseconds,
/// so a slice's statements share few distinct values, and the sketches see one insertion (a
/// logarithm) per distinct value and the lock is taken once a slice, not once a statement.
#[derive(Debug, Default)]
pub(crate) struct PendingLatencies {
    statement: Counts,
    first_result: Counts,
    chunk: Counts,
}

impl PendingLatencies {
    /// Whether another statement's end fits (each adds at most one distinct value a sketch).
    pub(crate) fn has_room(&self) -> bool {
        [&self.statement, &self.first_result, &self.chunk]
            .iter()
            .all(|c| c.0.len() < MAX_DISTINCT)
    }

    /// Whether nothing is counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.statement.0.is_empty()
    }

    /// Counts one statement's end. The caller makes room first ([`Self::has_room`]); without
    /// room a value goes uncounted here and is reported by the return (never silently).
    pub(crate) fn record(&mut self, end: &StatementEnd) -> bool {
        let (statement, first_result, chunk) = values(end);
        let mut counted = self.statement.add(statement);
        if let Some(ms) = first_result {
            counted &= self.first_result.add(ms);
        }
        if let Some(ms) = chunk {
            counted &= self.chunk.add(ms);
        }
        counted
    }
}

/// Distinct values with how often each was seen, in the order first seen.
#[derive(Debug, Default)]
struct Counts(Vec<(f64, u64)>);

impl Counts {
    /// Counts `v`; false when it is new and there is no room for it.
    fn add(&mut self, v: f64) -> bool {
        if let Some((_, n)) = self.0.iter_mut().find(|(x, _)| *x == v) {
            *n += 1;
            return true;
        }
        if self.0.len() >= MAX_DISTINCT {
            return false;
        }
        self.0.push((v, 1));
        true
    }

    fn drain_into(&mut self, sketch: &mut DDSketch) {
        for (v, n) in self.0.drain(..) {
            sketch.add_with_count(v, n);
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

    proptest::proptest! {
        /// Counting a slice's ends by value and handing them over whenever the counts fill
        /// gives the sketches exactly what recording each end does.
        #[test]
        fn counted_then_taken_is_recorded_one_by_one(
            ends in proptest::collection::vec(
                (0u64..200, proptest::option::of(0u64..50), 0u32..4, 0i64..400),
                0..300,
            ),
        ) {
            let (mut direct, mut taken) = (Latencies::default(), Latencies::default());
            let mut pending = PendingLatencies::default();
            for (latency, first, chunks, sum) in ends {
                let e = end(latency, first, chunks, sum);
                direct.record(&e);
                if !pending.has_room() {
                    taken.take(&mut pending);
                }
                proptest::prop_assert!(pending.record(&e));
            }
            taken.take(&mut pending);
            proptest::prop_assert!(pending.is_empty());
            proptest::prop_assert_eq!(direct.percentiles(), taken.percentiles());
        }
    }

    #[test]
    fn a_full_count_says_so() {
        let mut pending = PendingLatencies::default();
        for ms in 0..MAX_DISTINCT as u64 {
            assert!(pending.has_room());
            assert!(pending.record(&end(ms, None, 0, 0)));
        }
        assert!(!pending.has_room());
        assert!(
            pending.record(&end(3, None, 0, 0)),
            "a value already counted"
        );
        assert!(
            !pending.record(&end(1_000, None, 0, 0)),
            "no room for a new one"
        );
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
