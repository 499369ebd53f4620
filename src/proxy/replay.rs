//! A forwarded request's body, kept so that a failed attempt can send it again.

use super::body::{self, Activity, Reclaim, UpBody};
use super::{client_fault, closing, spool, Outgoing};
use crate::config::proxy::ProxyConfig;
use crate::http_base::{self, Body, RequestContext};
use bytes::Bytes;
use http::{header, Response};
use hyper::body::{Body as _, Incoming};
use std::sync::{Arc, Mutex};

/// The request body of one forwarded request, kept so that a failed attempt can send it
/// again: read whole first (see `spool`), or streamed and parked in `reclaim` between
/// attempts until its first byte is read (see `UpBody`).
pub(super) struct RequestBody {
    full: Option<spool::Spooled>,
    reclaim: Option<Reclaim>,
    pub(super) activity: Activity,
    /// The client sent no body.
    pub(super) bodiless: bool,
}

impl RequestBody {
    /// Reads the body whole when `spool` says so (setting Content-Length on `out`); an
    /// `Err` is the answer when that fails.
    pub(super) async fn prepare(
        body: Incoming,
        declared: Option<u64>,
        upgrade: bool,
        out: &mut Outgoing,
        cfg: &ProxyConfig,
        cx: &RequestContext<'_>,
    ) -> Result<RequestBody, Response<Body>> {
        let bodiless = body.is_end_stream();
        let activity = if bodiless {
            Activity::sent_at(cx.started)
        } else {
            Activity::tracked()
        };
        let (full, reclaim) = if bodiless {
            (Some(spool::Spooled::Memory(Vec::new())), None)
        } else if let Some(memory) = spool::reads_first(cfg, declared, upgrade, &out.headers) {
            match spool::read_request(body, cfg, memory).await {
                Ok(full) => {
                    activity.touch();
                    set_content_length(&mut out.headers, full.len());
                    (Some(full), None)
                }
                Err(spool::ReadError::Client(e)) => {
                    return Err(client_fault(&body::ClientBodyError(e), None, cx))
                }
                Err(e) => {
                    if let spool::ReadError::Spill(err) = &e {
                        // The client did nothing wrong: say why it gets a 500.
                        tracing::warn!(error = %err, "cannot spool a request body to a temporary file");
                    }
                    return Err(closing(http_base::error(e.status())));
                }
            }
        } else {
            (None, Some(Arc::new(Mutex::new(Some(body)))))
        };
        Ok(RequestBody {
            full,
            reclaim,
            activity,
            bodiless,
        })
    }

    /// The body for the next attempt; `None` once a streamed body has been read from.
    pub(super) fn take(&self, cfg: &ProxyConfig) -> Option<UpBody> {
        match (&self.full, &self.reclaim) {
            (Some(full), _) => Some(UpBody::spooled(full, self.activity.clone())),
            (None, Some(slot)) => {
                slot.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .map(|body| {
                        UpBody::new(
                            body,
                            cfg.max_body,
                            cfg.idle_timeout,
                            self.activity.clone(),
                            slot.clone(),
                        )
                    })
            }
            (None, None) => None,
        }
    }

    /// The body's frames when it was read whole into memory (none for no body): the lean
    /// client writes them as they are, for every attempt.
    pub(super) fn in_memory(&self) -> Option<&[Bytes]> {
        match &self.full {
            Some(spool::Spooled::Memory(frames)) => Some(frames),
            _ => None,
        }
    }

    /// Whether the body can still be sent: buffered, or streamed but never read.
    pub(super) fn can_resend(&self) -> bool {
        self.full.is_some()
            || self
                .reclaim
                .as_ref()
                .is_some_and(|s| s.lock().map(|b| b.is_some()).unwrap_or(false))
    }
}

/// The body's length as its one Content-Length. Replaced in place when the client declared
/// one: an insert first makes room for a new entry, and a map at capacity (hyper's, sized
/// to the previous response, plus the forwarding headers) grew for it, ~1.1k instructions
/// of a 64 KiB POST.
fn set_content_length(headers: &mut http::HeaderMap, len: u64) {
    let value = http::HeaderValue::from(len);
    if headers.get_all(header::CONTENT_LENGTH).iter().count() == 1 {
        if let Some(old) = headers.get_mut(header::CONTENT_LENGTH) {
            *old = value;
            return;
        }
    }
    headers.insert(header::CONTENT_LENGTH, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(headers: &http::HeaderMap) -> Vec<&str> {
        let all = headers.get_all(header::CONTENT_LENGTH).iter();
        all.map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn a_buffered_body_leaves_with_exactly_one_content_length() {
        let mut declared = http::HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "0005".parse().unwrap());
        set_content_length(&mut declared, 5);
        assert_eq!(lengths(&declared), ["5"]);

        // Repeated, equal lengths (hyper accepts them): one line goes on.
        let mut repeated = http::HeaderMap::new();
        repeated.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        repeated.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        set_content_length(&mut repeated, 5);
        assert_eq!(lengths(&repeated), ["5"]);

        // Chunked, now read whole.
        let mut chunked = http::HeaderMap::new();
        set_content_length(&mut chunked, 7);
        assert_eq!(lengths(&chunked), ["7"]);
    }
}
