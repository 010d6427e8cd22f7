//! The auth provider trait: a connection's credentials as headers, and a fixed token.

use std::fmt;

use crate::BoxFuture;

/// Supplies a connection's credentials as headers.
///
/// Contract: resolves quickly (refreshing a token is the provider's business, bounded by its own
/// timeout); `None` means "no credentials", and the unauthenticated endpoint is used.
pub trait AuthProvider: Send + Sync + 'static {
    /// Headers to add to authenticated requests (e.g. `Authorization: Bearer ...`).
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>>;
}

/// A fixed bearer token (personal access token). Its `Debug` never prints the token.
///
/// ```
/// use telemetry_types::auth::StaticToken;
/// let t = StaticToken::new("dapi-secret");
/// assert!(!format!("{t:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(***)")
    }
}

impl AuthProvider for StaticToken {
    fn auth_headers(&self) -> BoxFuture<'_, Option<Vec<(String, String)>>> {
        let headers = (!self.0.is_empty())
            .then(|| vec![("Authorization".to_owned(), format!("Bearer {}", self.0))]);
        Box::pin(async move { headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;

    #[test]
    fn static_token_headers() {
        let h = block_on(StaticToken::new("abc").auth_headers()).unwrap();
        assert_eq!(
            h,
            vec![("Authorization".to_owned(), "Bearer abc".to_owned())]
        );
        assert!(block_on(StaticToken::new("").auth_headers()).is_none());
    }
}
