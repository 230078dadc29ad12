//! The container log endpoint: `GET .../containers/{name}/log`.
//!
//! Containers write through steward's log driver (in the controller
//! crate); the files and their format belong to `steward-logfile`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;
use steward_logfile::{current_and_previous, log_files, object_dir_name, previous_base, Follower, ReadOptions};
use steward_schema::validate::is_runtime_id;

use crate::metrics::Verb;
use crate::{ApiError, AppState};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The endpoint's parameters: how to read, whether to follow, which run.
#[derive(Default, Debug)]
struct LogOptions {
    read: ReadOptions,
    follow: bool,
    previous: bool,
}

impl LogOptions {
    fn parse(raw: Option<&str>) -> Result<LogOptions, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
        let mut o = LogOptions::default();
        let num = |k: &str, v: &str| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::BadRequest(format!("query parameter {k}: {v:?} is not a non-negative integer")))
        };
        let flag = |v: &str| matches!(v, "true" | "1" | "");
        for (k, v) in pairs {
            match k.as_str() {
                "follow" => o.follow = flag(&v),
                "timestamps" => o.read.timestamps = flag(&v),
                "previous" => o.previous = flag(&v),
                "tailLines" => o.read.tail = Some(num(&k, &v)? as usize),
                "sinceSeconds" => {
                    let secs = num(&k, &v)?;
                    // Anything before the epoch means "everything"; a
                    // number chrono cannot represent is refused.
                    let since = chrono::Duration::try_seconds(secs)
                        .and_then(|d| Utc::now().checked_sub_signed(d))
                        .ok_or_else(|| ApiError::BadRequest(format!("query parameter sinceSeconds: {v:?} is too large")))?;
                    o.read.since = Some(since);
                }
                "sinceTime" => {
                    o.read.since = Some(
                        DateTime::parse_from_rfc3339(&v)
                            .map_err(|e| ApiError::BadRequest(format!("query parameter sinceTime: {e}")))?
                            .with_timezone(&Utc),
                    )
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

pub async fn get(
    State(app): State<AppState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let o = LogOptions::parse(q.as_deref())?;
    let obj = crate::containers::get_current(&app, &ns, &name)?;
    let Some(dir) = app.config.logs_dir.clone() else {
        return Err(ApiError::NotFound("this server keeps no container logs (no controller)".into()));
    };
    let uid = obj.object.metadata.uid.clone();
    // Current layout: the object's directory, one file per run attempt.
    let mut attempts_dir = object_dir_name(&ns, &name, &uid).map(|d| dir.join(d));
    let (current, previous) = match &attempts_dir {
        Some(d) => current_and_previous(d),
        None => (None, None),
    };
    let no_previous = || ApiError::BadRequest(format!("previous terminated container {name:?} has no logs"));
    let (current, base) = match current {
        Some(current) if o.previous => (current, previous.ok_or_else(no_previous)?),
        Some(current) => (current.clone(), current),
        // Containers started before it log per container id.
        None => {
            attempts_dir = None;
            let status = obj.object.status.as_ref();
            let id = status.and_then(|s| s.get("containerID")).and_then(Value::as_str).map(|s| s.trim_start_matches("containerd://"));
            // The id comes from status, which clients can write: it must name a
            // file in the log directory and nothing else.
            if let Some(id) = id.filter(|id| !is_runtime_id(id)) {
                return Err(ApiError::BadRequest(format!("status.containerID {id:?} is not a container id")));
            }
            let current = id.map(|id| dir.join(format!("{id}.log")));
            // Never ran (pulling, a pull or create error): as kube-apiserver,
            // say so, rather than serve (or follow) nothing.
            let waiting = status.and_then(|s| s.pointer("/state/waiting/reason")).and_then(Value::as_str);
            if let (Some(reason), false, false) = (waiting, o.previous, current.as_ref().is_some_and(|c| c.exists())) {
                return Err(ApiError::BadRequest(format!("container {name:?} is waiting to start: {reason}")));
            }
            let current = current.ok_or_else(|| ApiError::BadRequest(format!("container {name:?} has not been created yet")))?;
            let base = if o.previous { previous_base(&current) } else { current.clone() };
            (current, base)
        }
    };
    let files = log_files(&base);
    if files.is_empty() && o.previous {
        return Err(no_previous());
    }
    // File reads block: keep them off the async workers. The follower
    // continues exactly where this read of the current file ended.
    let follow = o.follow && !o.previous;
    let (first, read, end) = tokio::task::spawn_blocking(move || {
        steward_logfile::read_with_end(&files, &o.read).map(|(b, end)| (b, o.read, end))
    })
    .await
    .map_err(|e| ApiError::Unavailable(format!("reading logs: {e}")))?
    .map_err(|e| ApiError::Unavailable(format!("reading logs: {e}")))?;
    let body = if follow {
        let mut follower = Follower::from_offset(current, end);
        if let Some(d) = &attempts_dir {
            follower = follower.across_attempts(d.clone());
        }
        let shutdown = app.shutdown.clone();
        let stream = futures_util::stream::unfold(
            (Some(first), Some(follower), read, shutdown),
            |(first, follower, read, mut shutdown)| async move {
                if let Some(f) = first {
                    return Some((Ok::<_, Infallible>(Bytes::from(f)), (None, follower, read, shutdown)));
                }
                let mut follower = follower?;
                loop {
                    if *shutdown.borrow() {
                        return None;
                    }
                    let r = read.clone();
                    let (chunk, f) = tokio::task::spawn_blocking(move || (follower.poll(&r), follower)).await.ok()?;
                    follower = f;
                    if !chunk.is_empty() {
                        return Some((Ok(Bytes::from(chunk)), (None, Some(follower), read, shutdown)));
                    }
                    // The container was removed: nothing more will come.
                    if !follower.alive() {
                        return None;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            },
        );
        Body::from_stream(stream)
    } else {
        Body::from(first)
    };
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    r.extensions_mut().insert(Verb("log"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_seconds_overflow_is_a_bad_request() {
        for v in ["9223372036854775807", "9223372036854775", "99999999999999"] {
            let e = LogOptions::parse(Some(&format!("sinceSeconds={v}"))).unwrap_err();
            assert!(e.to_string().contains("sinceSeconds"), "{e}");
        }
        let o = LogOptions::parse(Some("sinceSeconds=60")).unwrap();
        assert!(o.read.since.is_some());
    }
}
