//! The batch sink trait: where the aggregator hands its batches (the exporter in production).

use crate::BoxFuture;
use crate::row::TelemetryRow;

/// Where batches of rows go (the exporter; a recording sink in tests).
///
/// Contract: `export` never panics and always resolves (it bounds its own waits); every row it
/// receives is counted by the sink as exported or dropped. The future may be dropped before it
/// resolves (shutdown deadline); the caller then counts the batch as dropped.
pub trait BatchSink: Send + Sync + 'static {
    /// Delivers one batch.
    fn export(&self, batch: Vec<TelemetryRow>) -> BoxFuture<'_, ()>;
}
