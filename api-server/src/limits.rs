//! Load shedding: a bound on requests in flight, as kube-apiserver's
//! `--max-requests-inflight`. Short requests and long-running ones
//! (watches, followed logs) are counted apart, so open watches never
//! starve ordinary requests, and neither can grow without bound. A request
//! over the bound gets 429 with `Retry-After: 1` at once, never a queue.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{ApiError, AppState};

/// The two bounds.
pub struct Inflight {
    short: Arc<Semaphore>,
    long: Arc<Semaphore>,
}

impl Inflight {
    pub fn new(short: usize, long: usize) -> Self {
        Inflight { short: Arc::new(Semaphore::new(short.max(1))), long: Arc::new(Semaphore::new(long.max(1))) }
    }
}

/// Watches and followed logs hold their slot for as long as they stream.
/// The query is decoded as the handlers decode it (`watch=%74rue` is a
/// watch); any truthy occurrence counts, so a repeated key cannot make a
/// long-running request pass as a short one. A query that does not decode
/// is refused by the handler, so it is counted as short.
fn long_running(req: &Request) -> bool {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query().unwrap_or_default()).unwrap_or_default();
    let set = |name: &str| pairs.iter().any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1" | ""));
    set("watch") || (set("follow") && req.uri().path().ends_with("/log"))
}

/// Health and version probes are never shed: an overloaded server must
/// still say it is alive.
fn exempt(req: &Request) -> bool {
    matches!(req.uri().path(), "/healthz" | "/livez" | "/readyz" | "/version")
}

pub async fn limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if exempt(&req) {
        return next.run(req).await;
    }
    let long = long_running(&req);
    let sem = if long { &app.inflight.long } else { &app.inflight.short };
    let permit = match sem.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let what = if long { "long-running requests (watches, followed logs)" } else { "requests" };
            tracing::warn!(path = %req.uri().path(), what, "too many requests in flight; shedding");
            return ApiError::TooManyRequests(format!("too many {what} in flight; retry shortly")).into_response();
        }
    };
    let resp = next.run(req).await;
    if long {
        hold_while_streaming(resp, permit)
    } else {
        resp
    }
}

/// Keeps `permit` until the response body has been sent (or dropped).
fn hold_while_streaming(resp: Response, permit: OwnedSemaphorePermit) -> Response {
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request {
        Request::builder().uri(uri).body(Body::empty()).unwrap()
    }

    #[test]
    fn long_running_requests_are_recognised_however_encoded() {
        let base = "/apis/steward.dev/v1alpha1/namespaces/default/containers";
        for q in ["watch=true", "watch=%74rue", "%77atch=1", "watch", "limit=1&watch=", "watch=false&watch=true"] {
            assert!(long_running(&req(&format!("{base}?{q}"))), "{q}");
        }
        for q in ["watch=false", "watching=true", "limit=1", "follow=true"] {
            assert!(!long_running(&req(&format!("{base}?{q}"))), "{q}");
        }
        assert!(long_running(&req(&format!("{base}/a/log?follow=%74rue"))));
    }
}
