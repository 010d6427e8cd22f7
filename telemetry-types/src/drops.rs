//! One vocabulary for what was lost and why: every crate of the pipeline counts its drops by
//! [`DropReason`], and every stats snapshot reports them as [`DropCounts`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a drop lost a driver event (before it became a row) or a built row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropUnit {
    /// An event the driver emitted.
    Event,
    /// A row built from events.
    Row,
}

/// Why an event or a row was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Event: the intake queue was full.
    QueueFull,
    /// Event: emitted after its host's client closed, or still queued when its close
    /// deadline passed.
    AfterClose,
    /// Row: the byte budget needed room for a newer row (the oldest non-error row goes).
    PendingCap,
    /// Row: the host's byte budget is spent even after older rows made room.
    ByteBudget,
    /// Row: not delivered by the close deadline, or lost with a failed sink task.
    Shutdown,
    /// Row: the feature flag says no (or the off switch is set).
    FlagDisabled,
    /// Row: the feature flag was still unknown after the wait bound.
    FlagUnknown,
    /// Row: the host's breaker is open, so no request was made.
    BreakerOpen,
    /// Row: a 4xx answer (after retries, if it was 429).
    Http4xx,
    /// Row: a 5xx answer after retries.
    Http5xx,
    /// Row: another non-2xx status.
    HttpOther,
    /// Row: the transport failed (after retries, if retryable).
    Transport,
    /// Row: the request body could not be serialised.
    Serialization,
    /// Row: its connection's auth provider failed (panicked in the call or in its future):
    /// only the rows of that credential are lost.
    AuthFailed,
    /// Row: its HTTP transport plug-in failed locally (panicked, or outlived the request's
    /// timeout without answering), or refused the request before sending it. Never counted
    /// against the host's breaker: the endpoint was not asked.
    Plugin,
    /// Row: the endpoint answered with a redirect (3xx). Redirects are never followed: extra
    /// headers and the body must not go to another host.
    Redirect,
    /// Event: the runtime the caller handed in was shut down, so nothing could process it.
    RuntimeGone,
    /// Row: the endpoint answered 2xx but said it accepted fewer logs than were sent
    /// (`numProtoSuccess` below the count, with its `errors`): the rest are counted here, so
    /// that `exported` means accepted by the server. Not retried (the server refused their
    /// content, not the request).
    ServerRejected,
    /// Row: a dry run (the audit shows what would have been sent); nothing was sent.
    DryRun,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 19] = [
        Self::QueueFull,
        Self::AfterClose,
        Self::PendingCap,
        Self::ByteBudget,
        Self::Shutdown,
        Self::FlagDisabled,
        Self::FlagUnknown,
        Self::BreakerOpen,
        Self::Http4xx,
        Self::Http5xx,
        Self::HttpOther,
        Self::Transport,
        Self::Serialization,
        Self::AuthFailed,
        Self::Plugin,
        Self::Redirect,
        Self::RuntimeGone,
        Self::ServerRejected,
        Self::DryRun,
    ];

    /// Stable snake-case name (logs, the simulator's JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::AfterClose => "after_close",
            Self::PendingCap => "pending_cap",
            Self::ByteBudget => "byte_budget",
            Self::Shutdown => "shutdown",
            Self::FlagDisabled => "flag_disabled",
            Self::FlagUnknown => "flag_unknown",
            Self::BreakerOpen => "breaker_open",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::HttpOther => "http_other",
            Self::Transport => "transport",
            Self::Serialization => "serialization",
            Self::AuthFailed => "auth_failed",
            Self::Plugin => "plugin_failed",
            Self::Redirect => "redirect",
            Self::RuntimeGone => "runtime_gone",
            Self::ServerRejected => "server_rejected",
            Self::DryRun => "dry_run",
        }
    }

    /// What the drop lost.
    pub const fn unit(self) -> DropUnit {
        match self {
            Self::QueueFull | Self::AfterClose | Self::RuntimeGone => DropUnit::Event,
            _ => DropUnit::Row,
        }
    }

    /// The reason for a non-2xx HTTP status.
    pub const fn for_status(status: u16) -> Self {
        match status {
            300..=399 => Self::Redirect,
            400..=499 => Self::Http4xx,
            500..=599 => Self::Http5xx,
            _ => Self::HttpOther,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drops by reason: a snapshot, cheap to copy and add up.
///
/// ```
/// use telemetry_types::drops::{DropCounts, DropReason, DropUnit};
/// let mut d = DropCounts::default();
/// d.add(DropReason::QueueFull, 2);
/// d.add(DropReason::Http5xx, 3);
/// assert_eq!(d.get(DropReason::Http5xx), 3);
/// assert_eq!(d.total(), 5);
/// assert_eq!(d.total_of(DropUnit::Event), 2);
/// assert_eq!(format!("{d:?}"), "{queue_full: 2, http_5xx: 3}");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Counts `n` more drops for `reason` (saturating).
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let c = &mut self.0[reason.index()];
        *c = c.saturating_add(n);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &DropCounts) {
        for (reason, n) in other.iter() {
            self.add(reason, n);
        }
    }

    /// Drops of every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Drops of the reasons that lose `unit`s.
    pub fn total_of(&self, unit: DropUnit) -> u64 {
        self.iter()
            .filter(|(r, _)| r.unit() == unit)
            .fold(0u64, |a, (_, n)| a.saturating_add(n))
    }

    /// `(reason, count)` for every reason with a count, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

impl fmt::Debug for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(r, n)| (DisplayKey(r), n)))
            .finish()
    }
}

struct DisplayKey(DropReason);

impl fmt::Debug for DisplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Drops by reason, counted concurrently (relaxed atomics); [`snapshot`](Self::snapshot)
/// reads them.
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts `n` drops for `reason`.
    pub fn add(&self, reason: DropReason, n: u64) {
        self.0[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> DropCounts {
        let mut out = DropCounts::default();
        for r in DropReason::ALL {
            out.0[r.index()] = self.0[r.index()].load(Ordering::Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.to_string(), r.as_str());
        }
    }

    #[test]
    fn counters_snapshot_and_merge() {
        let c = DropCounters::default();
        c.add(DropReason::Shutdown, 4);
        c.add(DropReason::AfterClose, 1);
        let mut a = c.snapshot();
        assert_eq!(a.total_of(DropUnit::Row), 4);
        assert_eq!(a.total_of(DropUnit::Event), 1);
        a.merge(&c.snapshot());
        assert_eq!(a.get(DropReason::Shutdown), 8);
        assert_eq!(a.iter().count(), 2);
        a.add(DropReason::Shutdown, u64::MAX);
        assert_eq!(a.get(DropReason::Shutdown), u64::MAX);
    }

    #[test]
    fn status_reasons() {
        assert_eq!(DropReason::for_status(404), DropReason::Http4xx);
        assert_eq!(DropReason::for_status(503), DropReason::Http5xx);
        assert_eq!(DropReason::for_status(302), DropReason::Redirect);
        assert_eq!(DropReason::for_status(600), DropReason::HttpOther);
    }
}
