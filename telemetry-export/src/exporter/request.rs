//! One group's request: its credentials (asked through the plug-in boundary), its endpoint,
//! its headers and its body.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use telemetry_types::auth::AuthProvider;
use telemetry_types::boundary::{self, PluginFailure};
use telemetry_types::clock::now_millis;
use telemetry_types::transport::{Bytes, HttpMethod, HttpRequest};

use super::group::{Group, provider_id};
use super::{AUTH_PATH, DatabricksExporter, MAX_EXPORT_RESPONSE_BYTES, UNAUTH_PATH};
use crate::encode::encode_rows;

/// How long an auth provider's answer is reused for the host's next requests. Asking costs
/// two thread hand-offs (the provider runs on a plug-in thread, where it may block): about
/// 50 us of CPU a request, half a microsecond a row at 100 rows a request, measured with
/// `telemetry-sim --host <served> --connections 2 --statements 20000 --pace-per-ms 20`. A
/// provider refreshes its token well before it expires; a token the endpoint refuses (401,
/// 403) is forgotten at once.
pub(super) const AUTH_REUSE: Duration = Duration::from_secs(1);

/// Providers remembered at most (a host's tenants active within a second; past it, the
/// stale ones are let go, then all, and the next requests ask again): a few tens of KiB of
/// headers a host at most, held for a second.
const MAX_ANSWERS: usize = 128;

/// The providers' recent answers, for [`AUTH_REUSE`]: by provider object (a weak reference
/// tells a new provider at a freed address apart), with the time of the answer on the
/// runtime's clock. A stale answer is removed by the next look-up of the host, so headers
/// are held no longer than the reuse window and the host's next request.
#[derive(Default)]
pub(super) struct Answers {
    recent: Mutex<HashMap<usize, Answer>>,
}

struct Answer {
    provider: Weak<dyn AuthProvider>,
    headers: Option<Vec<(String, String)>>,
    at: tokio::time::Instant,
}

impl Answers {
    fn recent(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Answer>> {
        // No code in these critical sections panics; a poisoned map is still a valid map.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `auth`'s answer if it is fresh; stale answers of every provider are let go.
    fn get(&self, auth: &Arc<dyn AuthProvider>) -> Option<Option<Vec<(String, String)>>> {
        let now = tokio::time::Instant::now();
        let mut recent = self.recent();
        recent.retain(|_, a| now.saturating_duration_since(a.at) < AUTH_REUSE);
        let answer = recent.get(&provider_id(auth))?;
        let same = answer
            .provider
            .upgrade()
            .is_some_and(|p| Arc::ptr_eq(&p, auth));
        same.then(|| answer.headers.clone())
    }

    fn put(&self, auth: &Arc<dyn AuthProvider>, headers: &Option<Vec<(String, String)>>) {
        let mut recent = self.recent();
        if recent.len() >= MAX_ANSWERS {
            let now = tokio::time::Instant::now();
            recent.retain(|_, a| now.saturating_duration_since(a.at) < AUTH_REUSE);
            if recent.len() >= MAX_ANSWERS {
                recent.clear();
            }
        }
        recent.insert(
            provider_id(auth),
            Answer {
                provider: Arc::downgrade(auth),
                headers: headers.clone(),
                at: tokio::time::Instant::now(),
            },
        );
    }

    /// The endpoint refused `auth`'s credentials: ask it again next time.
    pub(super) fn forget(&self, auth: &Arc<dyn AuthProvider>) {
        self.recent().remove(&provider_id(auth));
    }
}

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
    /// (panicked, or answered with headers that cannot be sent): its rows are dropped. An
    /// answer is reused for [`AUTH_REUSE`]; failures and timeouts are not remembered.
    pub(super) async fn credentials(
        &self,
        auth: Option<&Arc<dyn AuthProvider>>,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let Some(auth) = auth else { return Ok(None) };
        if let Some(answer) = self.answers.get(auth) {
            return Ok(answer);
        }
        match boundary::auth_headers(auth, self.config.auth_timeout).await {
            Ok(Some(headers)) => {
                let sendable = headers.iter().all(|(n, v)| {
                    !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                        && is_field_value(v)
                });
                if sendable {
                    let answer = Some(headers);
                    self.answers.put(auth, &answer);
                    Ok(answer)
                } else {
                    Err("the auth provider returned a header that cannot be sent".to_owned())
                }
            }
            Ok(None) => {
                self.answers.put(auth, &None);
                Ok(None)
            }
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
        let body = encode_rows(
            now_millis(),
            group.rows.iter().copied(),
            auth_headers.is_none(),
        )?;
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
