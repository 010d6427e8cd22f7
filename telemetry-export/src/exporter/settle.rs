//! Accounting: every row of a batch settled exactly once, as exported or dropped with its
//! reason, even when the export is cut mid-way.

use std::sync::atomic::{AtomicU64, Ordering};

use telemetry_types::drops::DropReason;

use super::DatabricksExporter;

/// The rows of one batch not settled yet: settling counts them (exported or dropped); what
/// is left when the export is dropped mid-way is counted as dropped on shutdown.
pub(super) struct Unsettled<'a> {
    exporter: &'a DatabricksExporter,
    rows: AtomicU64,
}

impl<'a> Unsettled<'a> {
    /// Holds `rows` rows of `exporter`'s until each is settled.
    pub(super) fn new(exporter: &'a DatabricksExporter, rows: usize) -> Self {
        Self {
            exporter,
            rows: AtomicU64::new(rows as u64),
        }
    }

    fn take(&self, n: usize) -> u64 {
        let n = n as u64;
        let before = self
            .rows
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            })
            .unwrap_or(0);
        before.min(n)
    }

    /// `n` rows accepted by the server.
    pub(super) fn exported(&self, n: usize) {
        let n = self.take(n);
        self.exporter
            .counters
            .rows_exported
            .fetch_add(n, Ordering::Relaxed);
    }

    /// `n` rows lost, for `reason`.
    pub(super) fn drop_rows(&self, reason: DropReason, n: usize, error: Option<String>) {
        let n = self.take(n);
        self.exporter.drop_rows(reason, n as usize, error);
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        let left = *self.rows.get_mut();
        if left > 0 {
            self.exporter
                .drop_rows(DropReason::Shutdown, left as usize, None);
        }
    }
}
