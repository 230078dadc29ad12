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
fn long_running(req: &Request) -> bool {
    let query = req.uri().query().unwrap_or_default();
    let set = |name: &str| {
        query.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k == name && matches!(v, "true" | "1" | "")
        })
    };
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
