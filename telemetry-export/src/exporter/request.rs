//! One group's request: its credentials (asked through the plug-in boundary), its endpoint,
//! its headers and its body.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use telemetry_types::auth::AuthProvider;
use telemetry_types::boundary::{self, PluginFailure};
use telemetry_types::clock::now_millis;
use telemetry_types::row::strip_for_unauthenticated;
use telemetry_types::transport::{Bytes, HttpMethod, HttpRequest};

use super::group::Group;
use super::{AUTH_PATH, DatabricksExporter, MAX_EXPORT_RESPONSE_BYTES, UNAUTH_PATH};
use crate::encode::encode_body;

/// Whether a header value an auth provider returned can go on the wire (no CR, LF or other
/// control characters): a provider's bad value fails its own rows, never the request line.
fn is_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl DatabricksExporter {
    /// The group's credentials: `Ok(Some(headers))` for the authenticated endpoint,
    /// `Ok(None)` for the unauthenticated one (no provider, a provider with no credentials,
    /// or one that did not answer within `auth_timeout`), `Err` when the provider failed
    /// (panicked, or answered with headers that cannot be sent): its rows are dropped.
    pub(super) async fn credentials(
        &self,
        auth: Option<&Arc<dyn AuthProvider>>,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let Some(auth) = auth else { return Ok(None) };
        match boundary::auth_headers(auth, self.config.auth_timeout).await {
            Ok(Some(headers)) => {
                let sendable = headers.iter().all(|(n, v)| {
                    !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                        && is_field_value(v)
                });
                if sendable {
                    Ok(Some(headers))
                } else {
                    Err("the auth provider returned a header that cannot be sent".to_owned())
                }
            }
            Ok(None) => Ok(None),
            Err(PluginFailure::TimedOut(_)) => {
                // No credentials in time: the unauthenticated endpoint, stripped.
                self.counters.auth_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(host = %self.host, timeout_ms = u64::try_from(self.config.auth_timeout.as_millis()).unwrap_or(u64::MAX), "telemetry auth provider did not answer in time");
                Ok(None)
            }
            Err(failure) => Err(failure.to_string()),
        }
    }

    /// The request for `group`: with `auth_headers`, to the authenticated endpoint with the
    /// connection's extra headers; without, to the unauthenticated one with the privacy rules
    /// applied (on copies of the rows) and no extra headers.
    pub(super) fn request(
        &self,
        group: &Group<'_>,
        auth_headers: Option<Vec<(String, String)>>,
    ) -> Result<HttpRequest, serde_json::Error> {
        let body = if auth_headers.is_some() {
            encode_body(now_millis(), group.rows.iter().map(|r| &r.log))?
        } else {
            let stripped: Vec<_> = group
                .rows
                .iter()
                .map(|r| {
                    let mut log = r.log.clone();
                    strip_for_unauthenticated(&mut log);
                    log
                })
                .collect();
            encode_body(now_millis(), stripped.iter())?
        };
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Accept".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), self.user_agent.clone()),
        ];
        let path = match auth_headers {
            Some(h) => {
                headers.extend(h);
                let extra = &group.rows[0].connection.extra_headers;
                headers.extend(extra.iter().map(|(n, v)| (n.to_owned(), v.to_owned())));
                AUTH_PATH
            }
            None => {
                self.counters
                    .unauthenticated_requests
                    .fetch_add(1, Ordering::Relaxed);
                UNAUTH_PATH
            }
        };
        Ok(HttpRequest {
            method: HttpMethod::Post,
            url: format!("{}{}", self.host.base_url(), path),
            headers,
            body: Bytes::from(body),
            timeout: self.config.request_timeout,
            max_response_bytes: MAX_EXPORT_RESPONSE_BYTES,
        })
    }
}
