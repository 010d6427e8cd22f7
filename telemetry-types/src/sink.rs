//! The batch sink trait: where the aggregator hands its batches (the exporter in production).

use crate::BoxFuture;
use crate::row::TelemetryRow;

/// Where batches of rows go (the exporter; a recording sink in tests).
///
/// Contract: `export` never panics and always resolves (it bounds its own waits). The sink
/// settles every row it receives, exactly once, as exported or dropped with a reason, even
/// when the returned future is dropped before it resolves (the close deadline cuts it): the
/// caller then counts the batch as handed over and nothing more, so no row is counted twice.
pub trait BatchSink: Send + Sync + 'static {
    /// Delivers one batch.
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()>;
}
