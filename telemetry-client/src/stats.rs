//! What the provider reports about every event: emitted, exported, dropped by reason.

use std::fmt;

use telemetry_aggregator::{AggregatorStats, LatencyPercentiles};
use telemetry_breaker::BreakerState;
use telemetry_export::ExportStats;
use telemetry_flags::FlagFailure;
use telemetry_types::drops::{DropCounts, DropUnit};
use telemetry_types::flag::FlagState;

/// Why a connection got a disabled handle (distinct from the server's flag saying no, which
/// [`HostStatsSummary::flag`] shows per host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DisabledReason {
    /// `config.enabled` is false (the default) or the connection's override said no.
    Config,
    /// `DATABRICKS_TELEMETRY_DISABLED` is set.
    EnvSwitch,
    /// The host could not be parsed.
    InvalidHost,
    /// The provider's config did not validate.
    InvalidConfig,
    /// No HTTP transport could be built (TLS setup).
    TransportSetup,
    /// `max_hosts` hosts were live already.
    TooManyHosts,
    /// The provider was shut down.
    ShutDown,
    /// An extra header (the provider's or the connection's) was refused: an invalid name or
    /// value, a reserved name, or too many (see `telemetry_types::transport::validate_header`).
    InvalidHeader,
}

impl DisabledReason {
    /// Every reason, in a stable order.
    pub const ALL: [DisabledReason; 8] = [
        Self::Config,
        Self::EnvSwitch,
        Self::InvalidHost,
        Self::InvalidConfig,
        Self::TransportSetup,
        Self::TooManyHosts,
        Self::ShutDown,
        Self::InvalidHeader,
    ];

    /// Stable snake-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::EnvSwitch => "env_switch",
            Self::InvalidHost => "invalid_host",
            Self::InvalidConfig => "invalid_config",
            Self::TransportSetup => "transport_setup",
            Self::TooManyHosts => "too_many_hosts",
            Self::ShutDown => "shut_down",
            Self::InvalidHeader => "invalid_header",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DisabledReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Statistics of one host's telemetry client.
#[derive(Debug, Clone)]
pub struct HostStats {
    /// The normalised host.
    pub host: String,
    /// Connections holding it.
    pub connections: usize,
    /// The feature flag.
    pub flag: FlagState,
    /// Why the flag look-up failed, when it did (telemetry is then off for the host): DNS,
    /// network, timeout, a status, a malformed answer, as distinct from the server saying no.
    pub flag_failure: Option<FlagFailure>,
    /// Statements begun on it and not ended yet.
    pub statements_open: u64,
    /// p50 / p95 / p99 of its statements' latency, time to first result and chunk download.
    pub latency: LatencyPercentiles,
    /// Aggregation counters.
    pub aggregator: AggregatorStats,
    /// Export counters (breaker included).
    pub export: ExportStats,
}

/// Totals over every host client the provider has had (live and closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Events the driver emitted while telemetry was on.
    pub events_emitted: u64,
    /// Rows built.
    pub rows_produced: u64,
    /// Rows the server accepted.
    pub rows_exported: u64,
    /// Events and rows dropped, by reason (aggregator and exporter together).
    pub dropped: DropCounts,
    /// HTTP export requests (every attempt).
    pub export_requests: u64,
    /// Retries among them.
    pub export_retries: u64,
    /// Times a host's breaker opened.
    pub breaker_openings: u64,
    /// Host clients created.
    pub clients_created: u64,
    /// Host clients closed.
    pub clients_closed: u64,
    /// Connections given a disabled handle, by reason.
    pub disabled_connections: Vec<(DisabledReason, u64)>,
    /// Statement endings after a statement's first (a `close` after `complete`, a second
    /// `fail`): ignored, since the first ending stands.
    pub statement_endings_ignored: u64,
    /// Statements refused: a non-metadata operation handed to `Connection::metadata` (the
    /// driver got a disabled handle).
    pub statements_refused: u64,
    /// Statements begun and not ended yet, on hosts live or closing.
    pub statements_open: u64,
    /// Statements not ended when their host's client closed (its last connection closed,
    /// or `shutdown`). Nothing was queued for them; an end that comes later is dropped
    /// `after_close`, and a handle leaked for good is counted only here.
    pub statements_open_at_close: u64,
    /// Host clients closed while their flag said no: the server's answer (telemetry is not
    /// turned on for the workspace).
    pub hosts_flag_refused: u64,
    /// Host clients closed while their flag look-up had failed, by why (DNS, timeout,
    /// network, a status, a malformed answer, no credentials, a plug-in's panic): telemetry
    /// was off for them for a reason of this side, not the server's.
    pub hosts_flag_failed: Vec<(FlagFailure, u64)>,
    /// p50 / p95 / p99 of statement latency, time to first result and CloudFetch chunk
    /// download latency, over every host (live and closed), from mergeable sketches (1 %
    /// relative error, bounded memory per host).
    pub latency: LatencyPercentiles,
    /// Live host clients, one entry each.
    pub hosts: Vec<HostStatsSummary>,
    /// Spans the OpenTelemetry bridge made (feature `opentelemetry`, with a bridge): one per
    /// statement ended, whether or not the server's flag allows Databricks telemetry.
    pub opentelemetry_spans: u64,
    /// Statements whose span the OpenTelemetry bridge lost: its queue was full, or the
    /// application's SDK panicked on it. With a bridge, every statement ended is counted in
    /// `opentelemetry_spans` or here.
    pub opentelemetry_spans_dropped: u64,
    /// CloudFetch chunk measurements the OpenTelemetry bridge lost, the same ways.
    pub opentelemetry_chunks_dropped: u64,
}

/// A live host in [`ProviderStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatsSummary {
    /// The normalised host.
    pub host: String,
    /// Connections holding it.
    pub connections: usize,
    /// The feature flag.
    pub flag: FlagState,
    /// Why the flag look-up failed, when it did.
    pub flag_failure: Option<FlagFailure>,
    /// The export breaker's state.
    pub breaker: BreakerState,
    /// Its latency percentiles.
    pub latency: LatencyPercentiles,
}

impl ProviderStats {
    /// Events dropped before becoming rows, all reasons.
    pub fn events_dropped(&self) -> u64 {
        self.dropped.total_of(DropUnit::Event)
    }

    /// Connections given a disabled handle for `reason`.
    pub fn disabled(&self, reason: DisabledReason) -> u64 {
        self.disabled_connections
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Rows dropped, all reasons.
    pub fn total_rows_dropped(&self) -> u64 {
        self.dropped.total_of(DropUnit::Row)
    }

    /// Host clients closed whose flag look-up had failed for `failure`.
    pub fn hosts_flag_failed_for(&self, failure: FlagFailure) -> u64 {
        self.hosts_flag_failed
            .iter()
            .find(|(f, _)| *f == failure)
            .map_or(0, |(_, n)| *n)
    }

    /// Counts a host client closed with its flag `state` and `failure`.
    pub(crate) fn count_closed_flag(&mut self, state: FlagState, failure: Option<FlagFailure>) {
        match (failure, state) {
            (Some(f), _) => match self.hosts_flag_failed.iter_mut().find(|(k, _)| *k == f) {
                Some((_, n)) => *n += 1,
                None => self.hosts_flag_failed.push((f, 1)),
            },
            (None, FlagState::Disabled) => self.hosts_flag_refused += 1,
            _ => {}
        }
    }

    pub(crate) fn add(&mut self, agg: &AggregatorStats, export: &ExportStats) {
        self.events_emitted += agg.events_emitted();
        self.rows_produced += agg.rows_produced;
        self.rows_exported += export.rows_exported;
        self.export_requests += export.requests;
        self.export_retries += export.retries;
        self.breaker_openings += export.breaker_openings;
        self.dropped.merge(&agg.dropped);
        self.dropped.merge(&export.rows_dropped);
    }
}
