//! Which rows of a batch may share one request: the same credentials, transport and headers.
//!
//! Credentials are told apart by what they resolve to, not by the provider object: a driver
//! that builds one provider per connection for the same token gets one request per batch,
//! not one per connection. What a provider resolves to is known from its last answer, kept
//! as a keyed 128-bit hash of its headers (never the headers themselves); a provider not
//! asked yet is a group of its own.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, Weak};

use telemetry_types::auth::AuthProvider;
use telemetry_types::row::TelemetryRow;

/// What tells two rows' credentials apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CredentialKey {
    /// No credentials: the unauthenticated endpoint.
    None,
    /// A provider whose answer is not known yet: by its identity.
    Provider(usize),
    /// A provider whose last answer hashed to this.
    Resolved(u128),
}

/// Providers known to give the same headers, by their last answer. Bounded: past
/// [`MAX_KNOWN`] providers it starts over (the next batches only group less).
pub(super) struct Fingerprints {
    keys: (RandomState, RandomState),
    known: Mutex<Known>,
}

/// Provider identity -> (the provider, to tell a reused address apart; its fingerprint).
type Known = HashMap<usize, (Weak<dyn AuthProvider>, u128)>;

/// Providers remembered at most.
const MAX_KNOWN: usize = 4096;

/// A provider object's identity (its address; a weak reference beside it tells a new object
/// at a freed address apart).
pub(super) fn provider_id(auth: &Arc<dyn AuthProvider>) -> usize {
    Arc::as_ptr(auth) as *const () as usize
}

impl Fingerprints {
    pub(super) fn new() -> Self {
        Self {
            keys: (RandomState::new(), RandomState::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // No code in these critical sections panics; a poisoned map is still a valid map.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of `auth`'s credentials.
    fn key(&self, auth: &Arc<dyn AuthProvider>) -> CredentialKey {
        let id = provider_id(auth);
        match self.known().get(&id) {
            // The same object (not a new one at a freed address).
            Some((weak, print)) if weak.upgrade().is_some_and(|a| Arc::ptr_eq(&a, auth)) => {
                CredentialKey::Resolved(*print)
            }
            _ => CredentialKey::Provider(id),
        }
    }

    /// Remembers what `auth` answered: a keyed hash of `headers`.
    pub(super) fn learn(&self, auth: &Arc<dyn AuthProvider>, headers: &[(String, String)]) {
        let hash = |state: &RandomState| state.hash_one(headers);
        let print = (u128::from(hash(&self.keys.0)) << 64) | u128::from(hash(&self.keys.1));
        let mut known = self.known();
        if known.len() >= MAX_KNOWN {
            known.retain(|_, (weak, _)| weak.strong_count() > 0);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(provider_id(auth), (Arc::downgrade(auth), print));
    }
}

/// Rows of a batch that may share a request, held by reference (rows are not moved to be
/// grouped), in batch order.
pub(super) struct Group<'b> {
    /// The provider asked for the group's credentials (`None`: the unauthenticated endpoint).
    pub(super) auth: Option<Arc<dyn AuthProvider>>,
    credentials: CredentialKey,
    transport: Option<usize>,
    pub(super) rows: Vec<&'b TelemetryRow>,
}

impl Group<'_> {
    fn takes(&self, row: &TelemetryRow, credentials: CredentialKey) -> bool {
        let first = &self.rows[0].connection;
        self.credentials == credentials
            && self.transport == row.connection.transport_key()
            && (Arc::ptr_eq(first, &row.connection)
                || first.extra_headers == row.connection.extra_headers)
    }
}

/// Splits `batch` by credentials (and transport and headers), keeping order within each
/// group. With `authenticated` off every row goes without credentials.
pub(super) fn group<'b>(
    batch: &'b [TelemetryRow],
    authenticated: bool,
    fingerprints: &Fingerprints,
) -> Vec<Group<'b>> {
    let mut groups: Vec<Group<'b>> = Vec::new();
    // One look-up per provider object per batch, however many rows it has.
    let mut keys: Vec<(usize, CredentialKey)> = Vec::new();
    // The group the previous row went to, and its connection: a connection's rows usually
    // come in runs, and a row of the same connection goes where the one before it went
    // (its credentials read once a run, not once a row).
    let mut last: Option<(&'b Arc<telemetry_types::connection::ConnectionInfo>, usize)> = None;
    for row in batch {
        if let Some((conn, index)) = last
            && Arc::ptr_eq(conn, &row.connection)
        {
            groups[index].rows.push(row);
            continue;
        }
        let auth = row.connection.credentials().filter(|_| authenticated);
        let credentials = match &auth {
            None => CredentialKey::None,
            Some(a) => {
                let id = provider_id(a);
                match keys.iter().find(|(k, _)| *k == id) {
                    Some((_, key)) => *key,
                    None => {
                        let key = fingerprints.key(a);
                        keys.push((id, key));
                        key
                    }
                }
            }
        };
        match groups.iter().position(|g| g.takes(row, credentials)) {
            Some(index) => {
                groups[index].rows.push(row);
                last = Some((&row.connection, index));
            }
            None => {
                groups.push(Group {
                    auth,
                    credentials,
                    transport: row.connection.transport_key(),
                    rows: vec![row],
                });
                last = Some((&row.connection, groups.len() - 1));
            }
        }
    }
    groups
}
