//! Which rows of a batch may share one request: the same credentials, transport and headers.

use std::sync::Arc;

use telemetry_types::auth::AuthProvider;
use telemetry_types::row::TelemetryRow;

/// Rows of a batch that may share a request, held by reference (rows are not moved to be
/// grouped), in batch order.
pub(super) struct Group<'b> {
    /// The credentials of every row of the group (`None`: the unauthenticated endpoint).
    pub(super) auth: Option<Arc<dyn AuthProvider>>,
    credentials: Option<usize>,
    transport: Option<usize>,
    pub(super) rows: Vec<&'b TelemetryRow>,
}

impl Group<'_> {
    fn takes(&self, row: &TelemetryRow, credentials: Option<usize>) -> bool {
        let first = &self.rows[0].connection;
        self.credentials == credentials
            && self.transport == row.connection.transport_key()
            && (Arc::ptr_eq(first, &row.connection)
                || first.extra_headers == row.connection.extra_headers)
    }
}

/// Splits `batch` by credentials (and transport and headers), keeping order within each
/// group. With `authenticated` off every row goes without credentials.
pub(super) fn group(batch: &[TelemetryRow], authenticated: bool) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for row in batch {
        let (credentials, auth) = if authenticated {
            (
                row.connection.credentials_key(),
                row.connection.auth.clone(),
            )
        } else {
            (None, None)
        };
        match groups.iter_mut().find(|g| g.takes(row, credentials)) {
            Some(g) => g.rows.push(row),
            None => groups.push(Group {
                auth,
                credentials,
                transport: row.connection.transport_key(),
                rows: vec![row],
            }),
        }
    }
    groups
}
