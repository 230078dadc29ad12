//! Prometheus text metrics: request counts and latencies by verb and code,
//! store revision, objects and watchers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// The Kubernetes verb of a request, set by handlers as a response
/// extension; the middleware falls back to the HTTP method.
#[derive(Clone, Copy)]
pub struct Verb(pub &'static str);

const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), Series>>,
}

impl Metrics {
    fn observe(&self, verb: &'static str, code: u16, secs: f64) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry((verb, code)).or_default();
        s.count += 1;
        s.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }
}

fn method_verb(m: &Method) -> &'static str {
    match *m {
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

pub async fn track(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let fallback = method_verb(req.method());
    let resp = next.run(req).await;
    let verb = resp.extensions().get::<Verb>().map_or(fallback, |v| v.0);
    app.metrics.observe(verb, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

pub async fn render(State(app): State<AppState>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP steward_requests_total API requests by verb and HTTP code.\n# TYPE steward_requests_total counter\n");
    let m = app.metrics.requests.lock().unwrap_or_else(|p| p.into_inner());
    for ((verb, code), s) in m.iter() {
        let _ = writeln!(out, "steward_requests_total{{verb=\"{verb}\",code=\"{code}\"}} {}", s.count);
    }
    out.push_str("# HELP steward_request_duration_seconds API request latency (to response headers for watches).\n# TYPE steward_request_duration_seconds histogram\n");
    for ((verb, code), s) in m.iter() {
        let l = format!("verb=\"{verb}\",code=\"{code}\"");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "steward_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}", s.buckets[i]);
        }
        let _ = writeln!(out, "steward_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "steward_request_duration_seconds_sum{{{l}}} {}", s.sum);
        let _ = writeln!(out, "steward_request_duration_seconds_count{{{l}}} {}", s.count);
    }
    drop(m);
    let st = &app.store;
    let gauges = [
        ("steward_store_revision", "Current store revision.", st.revision()),
        ("steward_store_compacted_revision", "Oldest revision a watch can start from.", st.compacted_revision()),
        ("steward_store_objects", "Objects in the store.", st.object_count() as i64),
        ("steward_watchers", "Open watches.", st.watchers() as i64),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    if let Some(r) = &app.config.reloader {
        let (ok, failed) = r.counts();
        out.push_str("# HELP steward_config_reloads_total Configuration reloads (SIGHUP or POST /-/reload) by result.\n# TYPE steward_config_reloads_total counter\n");
        let _ = writeln!(out, "steward_config_reloads_total{{result=\"success\"}} {ok}");
        let _ = writeln!(out, "steward_config_reloads_total{{result=\"failure\"}} {failed}");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
