//! The aggregator's settings: declared, defaulted and validated here, and nowhere else.
//!
//! Defaults follow the Node.js driver (batch 100, flush every 5 s, 2 s to close); what the
//! aggregator holds is bounded in bytes (4 MiB a host) rather than by the Node.js driver's
//! 500-row cap, which loses most of a burst while a flush is in flight.

use std::time::Duration;

use telemetry_types::validation::ConfigError;

/// How the aggregator batches and bounds what it holds.
///
/// ```
/// use telemetry_aggregator::AggregatorConfig;
/// let mut config = AggregatorConfig::default();
/// config.batch_size = 50;
/// config.validate().unwrap();
/// config.batch_size = 0;
/// assert!(config.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AggregatorConfig {
    /// Rows per batch (one export request); reaching it starts a flush. Default 200 (the Go
    /// driver's; under load, half the requests of 100, each costing tens of microseconds of
    /// CPU); 1..=10 000.
    pub batch_size: usize,
    /// Rows one export request may carry, at most, when more than `batch_size` are waiting:
    /// under load, fewer and larger requests (as the OpenTelemetry Collector's
    /// `send_batch_max_size`). A request costs the process tens of microseconds of CPU
    /// whatever its size, so 1000-row requests save a few tenths of a microsecond a
    /// statement against 200-row ones. Default 1000 (a body of about 1 MB); 1..=10 000. A
    /// value below `batch_size` counts as `batch_size`; equal to it (with `linger` zero),
    /// every request carries `batch_size` rows.
    pub max_batch_size: usize,
    /// How long a full batch may wait to grow towards `max_batch_size` when a request
    /// started less than this ago (as Kafka's `linger.ms`): a host sends at most one request
    /// per `linger` unless `max_batch_size` rows, or a quarter of the byte budget, are
    /// waiting. At low rates nothing changes: a full batch after a quiet spell goes at once.
    /// Default 100 ms; 0 (every full batch at once)..=1 h. A linger longer than
    /// `flush_interval` counts as `flush_interval`.
    pub linger: Duration,
    /// Pending rows are flushed at least this often. Default 5 s; 1 ms..=1 h.
    pub flush_interval: Duration,
    /// Each wait for the periodic flush, the first included, is drawn uniformly within this
    /// many percent either side of `flush_interval`, so that processes started together (a
    /// fleet after a deploy) do not export in step. Default 20; 0..=100.
    pub flush_jitter_percent: u8,
    /// Rows waiting to be exported, at most; past it the oldest non-error row is dropped.
    /// Default 100 000 (the byte budget binds first); `batch_size..=1 000 000`.
    pub max_pending_rows: usize,
    /// Export requests in flight at once (each a batch, each through the breaker). Default 4;
    /// 1..=64. More than one keeps a burst from piling up behind one slow request.
    pub max_concurrent_exports: usize,
    /// How long closing waits for the final flush when the aggregator is dropped without
    /// [`close`](crate::Aggregator::close). Default 2 s; 0..=10 min.
    pub close_timeout: Duration,
    /// Events buffered between the driver and the background task, at most. Default
    /// 100 000; 1..=1 000 000. The queue grows on demand: its first 192 slots (232 bytes
    /// each) come with the host's first event, the rest only while a burst needs them, and
    /// every queued event also counts against `max_buffered_bytes`.
    pub queue_capacity: usize,
    /// Memory this host may hold, in bytes, twice over: once for the intake queue (events and
    /// their error text), once for the rows waiting for export. Past it older rows make room,
    /// then new ones are dropped ([`ByteBudget`](telemetry_types::drops::DropReason::ByteBudget),
    /// [`QueueFull`](telemetry_types::drops::DropReason::QueueFull)). Default 4 MiB;
    /// 64 KiB..=1 GiB.
    pub max_buffered_bytes: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            max_batch_size: 1000,
            linger: Duration::from_millis(100),
            flush_interval: Duration::from_secs(5),
            flush_jitter_percent: 20,
            max_pending_rows: 100_000,
            max_concurrent_exports: 4,
            close_timeout: Duration::from_secs(2),
            queue_capacity: 100_000,
            max_buffered_bytes: 4 << 20,
        }
    }
}

impl AggregatorConfig {
    /// Rows one request carries at most: `max_batch_size`, never below `batch_size`.
    pub(crate) fn request_rows(&self) -> usize {
        self.batch_size.max(self.max_batch_size)
    }

    /// How long a full batch may wait: `linger`, never beyond `flush_interval`.
    pub(crate) fn effective_linger(&self) -> Duration {
        self.linger.min(self.flush_interval)
    }

    /// Checks every value against its bounds; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const MILLION: usize = 1_000_000;
        ConfigError::check_range(
            self.batch_size,
            1,
            10_000,
            "aggregation.batch_size",
            "must be in 1..=10000",
        )?;
        ConfigError::check_range(
            self.max_batch_size,
            1,
            10_000,
            "aggregation.max_batch_size",
            "must be in 1..=10000",
        )?;
        ConfigError::check_range(
            self.flush_interval,
            Duration::from_millis(1),
            Duration::from_secs(3600),
            "aggregation.flush_interval",
            "must be in 1 ms..=1 h",
        )?;
        ConfigError::check_range(
            self.linger,
            Duration::ZERO,
            Duration::from_secs(3600),
            "aggregation.linger",
            "must be at most 1 h",
        )?;
        ConfigError::check_range(
            self.flush_jitter_percent,
            0,
            100,
            "aggregation.flush_jitter_percent",
            "must be in 0..=100",
        )?;
        ConfigError::check_range(
            self.max_pending_rows,
            self.batch_size,
            MILLION,
            "aggregation.max_pending_rows",
            "must be in batch_size..=1000000",
        )?;
        ConfigError::check_range(
            self.max_concurrent_exports,
            1,
            64,
            "aggregation.max_concurrent_exports",
            "must be in 1..=64",
        )?;
        ConfigError::check_range(
            self.close_timeout,
            Duration::ZERO,
            Duration::from_secs(600),
            "aggregation.close_timeout",
            "must be at most 10 min",
        )?;
        ConfigError::check_range(
            self.queue_capacity,
            1,
            MILLION,
            "aggregation.queue_capacity",
            "must be in 1..=1000000",
        )?;
        ConfigError::check_range(
            self.max_buffered_bytes,
            64 << 10,
            1 << 30,
            "aggregation.max_buffered_bytes",
            "must be in 64 KiB..=1 GiB",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = AggregatorConfig::default();
        assert_eq!(c.batch_size, 200);
        assert_eq!(c.max_batch_size, 1000);
        assert_eq!(c.linger, Duration::from_millis(100));
        assert_eq!(c.flush_interval, Duration::from_secs(5));
        assert_eq!(c.max_pending_rows, 100_000);
        assert_eq!(c.max_concurrent_exports, 4);
        assert_eq!(c.close_timeout, Duration::from_secs(2));
        assert_eq!(c.queue_capacity, 100_000);
        assert_eq!(c.max_buffered_bytes, 4 << 20);
        c.validate().unwrap();
    }

    fn with(f: impl FnOnce(&mut AggregatorConfig)) -> AggregatorConfig {
        let mut c = AggregatorConfig::default();
        f(&mut c);
        c
    }

    #[rstest]
    #[case(with(|c| c.batch_size = 0), "aggregation.batch_size")]
    #[case(with(|c| c.batch_size = 10_001), "aggregation.batch_size")]
    #[case(with(|c| c.max_batch_size = 0), "aggregation.max_batch_size")]
    #[case(with(|c| c.max_batch_size = 10_001), "aggregation.max_batch_size")]
    #[case(with(|c| c.linger = Duration::from_secs(3601)), "aggregation.linger")]
    #[case(with(|c| c.flush_interval = Duration::ZERO), "aggregation.flush_interval")]
    #[case(with(|c| c.flush_interval = Duration::MAX), "aggregation.flush_interval")]
    #[case(with(|c| c.max_pending_rows = 99), "aggregation.max_pending_rows")]
    #[case(with(|c| c.max_pending_rows = usize::MAX), "aggregation.max_pending_rows")]
    #[case(with(|c| c.max_concurrent_exports = 0), "aggregation.max_concurrent_exports")]
    #[case(with(|c| c.max_concurrent_exports = 65), "aggregation.max_concurrent_exports")]
    #[case(with(|c| c.close_timeout = Duration::MAX), "aggregation.close_timeout")]
    #[case(with(|c| c.queue_capacity = 0), "aggregation.queue_capacity")]
    #[case(with(|c| c.max_buffered_bytes = 0), "aggregation.max_buffered_bytes")]
    #[case(with(|c| c.max_buffered_bytes = usize::MAX), "aggregation.max_buffered_bytes")]
    fn out_of_range_is_rejected(#[case] config: AggregatorConfig, #[case] field: &str) {
        let err = config.validate().unwrap_err();
        let ConfigError::Invalid { field: got, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*got, field);
    }
}
