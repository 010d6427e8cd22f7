//! Who produced an event: one driver connection's identity, shared by its events.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::AuthProvider;
use crate::host::Host;
use crate::wire::{AuthType, DriverConnectionParameters, DriverSystemConfiguration};

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Who produced an event: one driver connection.
pub struct ConnectionInfo {
    /// Process-unique id, used to key statements and group rows by credentials.
    pub id: u64,
    /// The normalised workspace host.
    pub host: Host,
    /// From `?o=<digits>` or `/o/<digits>/` in the HTTP path only.
    pub workspace_id: Option<i64>,
    /// The server's session id, once known.
    pub session_id: Option<String>,
    /// The driver's user agent (already redacted).
    pub user_agent: String,
    /// How the connection authenticates.
    pub auth_type: Option<AuthType>,
    /// Sent on `CREATE_SESSION` rows only.
    pub system_configuration: Option<DriverSystemConfiguration>,
    /// Sent on `CREATE_SESSION` rows only.
    pub connection_params: Option<DriverConnectionParameters>,
    /// The connection's credentials; `None` sends to the unauthenticated endpoint.
    pub auth: Option<Arc<dyn AuthProvider>>,
}

impl ConnectionInfo {
    /// A connection to `host` with nothing else known.
    pub fn new(host: Host, user_agent: impl Into<String>) -> Self {
        Self {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            host,
            workspace_id: None,
            session_id: None,
            user_agent: user_agent.into(),
            auth_type: None,
            system_configuration: None,
            connection_params: None,
            auth: None,
        }
    }

    /// The identity of the credentials: rows with equal keys may share a request.
    pub fn credentials_key(&self) -> Option<usize> {
        self.auth
            .as_ref()
            .map(|a| Arc::as_ptr(a) as *const () as usize)
    }
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("workspace_id", &self.workspace_id)
            .field("session_id", &self.session_id)
            .field("auth_type", &self.auth_type)
            .field("has_credentials", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StaticToken;

    #[test]
    fn connection_ids_unique_and_credentials_key_by_provider() {
        let host = Host::parse("a.example", false).unwrap();
        let a = ConnectionInfo::new(host.clone(), "ua");
        let mut b = ConnectionInfo::new(host.clone(), "ua");
        assert_ne!(a.id, b.id);
        assert_eq!(a.credentials_key(), None);
        let token: Arc<dyn AuthProvider> = Arc::new(StaticToken::new("t"));
        b.auth = Some(token.clone());
        let mut c = ConnectionInfo::new(host, "ua");
        c.auth = Some(token);
        assert_eq!(b.credentials_key(), c.credentials_key());
        assert!(b.credentials_key().is_some());
        let dbg = format!("{b:?}");
        assert!(dbg.contains("has_credentials: true"));
    }
}
