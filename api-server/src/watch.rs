//! The watch stream: newline-delimited JSON events, flushed one by one.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use steward_store::{Event, EventType, StoreError, Watch};
use tokio::time::Instant;

use crate::registry::{matches, Kind};
use crate::metrics::Verb;
use crate::query::Params;
use crate::{ApiError, AppState};

fn frame(event_type: &str, object: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(object.len() + 32);
    b.extend_from_slice(br#"{"type":""#);
    b.extend_from_slice(event_type.as_bytes());
    b.extend_from_slice(br#"","object":"#);
    b.extend_from_slice(object);
    b.extend_from_slice(b"}\n");
    Bytes::from(b)
}

fn error_frame(e: &StoreError) -> Bytes {
    let status = ApiError::Store(e.clone()).status();
    frame("ERROR", &serde_json::to_vec(&status).unwrap_or_default())
}

fn bookmark_frame(revision: i64) -> Bytes {
    let obj = format!(
        r#"{{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{{"resourceVersion":"{revision}"}}}}"#
    );
    frame("BOOKMARK", obj.as_bytes())
}

/// What a watcher with this namespace and selectors sees of `e`, decided
/// from the previous object as well as the new one: was in and still in →
/// the event as it is; was in, now out → DELETED; was out, now in →
/// ADDED; a deletion of an object that was in (or whose last state is in)
/// → DELETED; otherwise nothing.
fn translate(kind: &dyn crate::registry::Strategy, p: &Params, ns: Option<&str>, e: &Event) -> Option<EventType> {
    if ns.is_some_and(|ns| ns != e.object.key.namespace) {
        return None;
    }
    let now = matches(kind, p, &e.object);
    let before = e.prev.as_ref().map(|prev| matches(kind, p, prev));
    let selective = !p.label_selector.is_empty() || !p.field_selector.is_empty();
    match (e.event_type, before, now) {
        (EventType::Added, _, now) => now.then_some(EventType::Added),
        (EventType::Deleted, before, now) => (now || before == Some(true) || (before.is_none() && selective)).then_some(EventType::Deleted),
        (EventType::Modified, Some(true), true) => Some(EventType::Modified),
        (EventType::Modified, Some(true), false) => Some(EventType::Deleted),
        (EventType::Modified, Some(false), true) => Some(EventType::Added),
        (EventType::Modified, Some(false), false) => None,
        (EventType::Modified, None, true) => Some(EventType::Modified),
        // The previous version is unknown (compacted out of the log and
        // the snapshot): the object may have just left the selection, so
        // say DELETED (a client that never had it ignores
        // that; one that had it must not keep it).
        (EventType::Modified, None, false) => selective.then_some(EventType::Deleted),
    }
}

struct Stream {
    app: AppState,
    kind: Kind,
    ns: Option<String>,
    params: Params,
    watch: Option<Watch>,
    /// A first frame to send before anything else (an early ERROR).
    first: Option<Bytes>,
    deadline: Option<Instant>,
    next_bookmark: Option<Instant>,
    /// Events as one-row Tables (`kubectl get -w`), the column definitions
    /// in the first only.
    table: Option<crate::table::Include>,
    columns_sent: bool,
}

/// Starts a watch response. A revision that is already compacted still
/// gets a 200 whose only event is an ERROR with a 410 Status, as the
/// Kubernetes API server does (an HTTP 410 makes some clients retry the
/// same revision for ever).
pub fn serve(app: AppState, kind: Kind, ns: Option<String>, params: Params, table: Option<crate::table::Include>) -> Result<Response, ApiError> {
    let from = params.watch_from()?;
    let (watch, first) = match app.store.watch(kind.resource(), from) {
        Ok(w) => (Some(w), None),
        Err(e @ StoreError::Expired { .. }) => (None, Some(error_frame(&e))),
        Err(e) => return Err(e.into()),
    };
    let now = Instant::now();
    let deadline = params.timeout_seconds.map(|s| now + Duration::from_secs(s));
    let next_bookmark = params.allow_bookmarks.then(|| now + app.config.bookmark_interval);
    let state = Stream { app, kind, ns, params, watch, first, deadline, next_bookmark, table, columns_sent: false };
    let body = Body::from_stream(stream::unfold(state, step));
    // A Table watch says so (kubectl reads each event's object as a Table).
    let content_type = if table.is_some() { "application/json;as=Table;v=v1;g=meta.k8s.io;stream=watch" } else { "application/json;stream=watch" };
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    r.extensions_mut().insert(Verb("watch"));
    Ok(r)
}

async fn step(mut s: Stream) -> Option<(Result<Bytes, Infallible>, Stream)> {
    if let Some(f) = s.first.take() {
        return Some((Ok(f), s));
    }
    let mut shutdown = s.app.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let watch = s.watch.as_mut()?;
        let far = Instant::now() + Duration::from_secs(86_400);
        let deadline = s.deadline.unwrap_or(far);
        let bookmark_at = s.next_bookmark.unwrap_or(far);
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = tokio::time::sleep_until(bookmark_at) => {
                s.next_bookmark = Some(Instant::now() + s.app.config.bookmark_interval);
                if let Some(rev) = watch.bookmark() {
                    return Some((Ok(bookmark_frame(rev)), s));
                }
            }
            e = watch.next() => match e {
                None => return None,
                Some(Err(e)) => {
                    s.watch = None;
                    return Some((Ok(error_frame(&e)), s));
                }
                Some(Ok(e)) => {
                    if let Some(t) = translate(s.kind.as_ref(), &s.params, s.ns.as_deref(), &e) {
                        if let Some(include) = s.table {
                            let rows = crate::table::row(s.kind.as_ref(), &e.object.json, include, chrono::Utc::now()).into_iter().collect();
                            let rv = e.object.object.metadata.resource_version.clone();
                            let table = crate::table::table(s.kind.as_ref(), rows, &rv, None, !s.columns_sent);
                            s.columns_sent = true;
                            return Some((Ok(frame(t.as_str(), table.to_string().as_bytes())), s));
                        }
                        return Some((Ok(frame(t.as_str(), &e.object.json)), s));
                    }
                }
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use steward_store::{Key, Object, Stored};

    fn stored(labels: &[(&str, &str)], deleting: bool) -> Arc<Stored> {
        let mut o = Object {
            api_version: "steward.dev/v1alpha1".into(),
            kind: "Container".into(),
            metadata: Default::default(),
            spec: serde_json::Value::Null,
            status: None,
            rest: Default::default(),
        };
        o.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if deleting {
            o.metadata.deletion_timestamp = Some(steward_schema::Time::now());
        }
        Stored::new(Key::new("containers", "default", "a"), o).unwrap()
    }

    fn ev(t: EventType, prev: Option<Arc<Stored>>, object: Arc<Stored>) -> Event {
        Event { revision: 2, event_type: t, object, prev }
    }

    #[test]
    fn visibility_is_decided_from_the_previous_and_the_new_object() {
        let p = Params::parse(Some("labelSelector=app%3Dweb")).unwrap();
        let web = || stored(&[("app", "web")], false);
        let other = || stored(&[("app", "db")], false);
        use EventType::*;
        let cases = [
            (ev(Modified, Some(web()), web()), Some(Modified)),
            (ev(Modified, Some(web()), other()), Some(Deleted)),
            (ev(Modified, Some(other()), web()), Some(Added)),
            (ev(Modified, Some(other()), other()), None),
            // The last finalizer removed and the labels changed in one
            // write: the watcher that had it must get DELETED.
            (ev(Deleted, Some(stored(&[("app", "web")], true)), other()), Some(Deleted)),
            (ev(Deleted, Some(other()), other()), None),
            (ev(Deleted, Some(web()), web()), Some(Deleted)),
            (ev(Added, None, web()), Some(Added)),
            (ev(Added, None, other()), None),
            // Unknown previous version (replayed from the log).
            (ev(Modified, None, other()), Some(Deleted)),
            (ev(Modified, None, web()), Some(Modified)),
        ];
        for (i, (e, want)) in cases.iter().enumerate() {
            assert_eq!(translate(&crate::containers::Containers, &p, None, e), *want, "case {i}");
        }
        // Without a selector nothing is translated.
        let all = Params::parse(None).unwrap();
        assert_eq!(translate(&crate::containers::Containers, &all, None, &ev(Deleted, Some(other()), other())), Some(Deleted));
    }
}
