//! The columns a Container is shown with, one definition for every
//! printer: `steward get` (cli) and the API's `meta.k8s.io/v1` Table
//! (what `kubectl get` asks for), so both print the same cells.

use chrono::{DateTime, TimeDelta, Utc};

use crate::Container;

/// One column, as a Table's `columnDefinitions` describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// The header (`steward get` prints it upper-cased, as kubectl does).
    pub name: &'static str,
    /// OpenAPI type: `string` or `integer`.
    pub type_: &'static str,
    /// OpenAPI format (`name` marks the name column).
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: with `-o wide`.
    pub priority: i32,
}

/// The columns, in order.
pub const COLUMNS: [Column; 9] = [
    Column { name: "Name", type_: "string", format: "name", description: "The container's name.", priority: 0 },
    Column { name: "Ready", type_: "string", format: "", description: "1/1 when the Ready condition is True.", priority: 0 },
    Column {
        name: "Status",
        type_: "string",
        format: "",
        description: "Terminating, else the waiting reason, else the phase.",
        priority: 0,
    },
    Column { name: "Restarts", type_: "integer", format: "", description: "status.restartCount.", priority: 0 },
    Column { name: "Age", type_: "string", format: "", description: "Since metadata.creationTimestamp.", priority: 0 },
    Column { name: "Image", type_: "string", format: "", description: "spec.image.", priority: 1 },
    Column { name: "Container-ID", type_: "string", format: "", description: "status.containerID.", priority: 1 },
    Column { name: "PID", type_: "string", format: "", description: "status.pid.", priority: 1 },
    Column { name: "IP", type_: "string", format: "", description: "status.ip.", priority: 1 },
];

/// A cell: text, or a number (RESTARTS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Int(i64),
}

impl Cell {
    pub fn text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Cell::Text(s) => serde_json::Value::String(s.clone()),
            Cell::Int(n) => serde_json::Value::from(*n),
        }
    }
}

fn or_none(s: &str) -> String {
    if s.is_empty() { "<none>".into() } else { s.to_string() }
}

/// The cells of `c` for [`COLUMNS`], its age measured at `now`.
pub fn cells(c: &Container, now: DateTime<Utc>) -> Vec<Cell> {
    let status = c.status.as_ref();
    let ready = status.and_then(|s| s.condition("Ready")).is_some_and(|c| c.status == "True");
    vec![
        Cell::Text(c.metadata.name.clone()),
        Cell::Text(if ready { "1/1" } else { "0/1" }.into()),
        Cell::Text(status_text(c)),
        Cell::Int(i64::from(status.map_or(0, |s| s.restart_count))),
        Cell::Text(c.metadata.creation_timestamp.map_or_else(|| "<unknown>".into(), |t| human_age(now - t.0))),
        Cell::Text(or_none(&c.spec.image)),
        Cell::Text(or_none(status.and_then(|s| s.container_id.as_deref()).unwrap_or_default())),
        Cell::Text(status.and_then(|s| s.pid).map_or_else(|| "<none>".into(), |p| p.to_string())),
        Cell::Text(or_none(status.and_then(|s| s.ip.as_deref()).unwrap_or_default())),
    ]
}

/// The STATUS column: `Terminating` while a delete waits for finalizers,
/// else the waiting reason (`CrashLoopBackOff` says more than `Pending`),
/// else the phase.
pub fn status_text(c: &Container) -> String {
    if c.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let status = c.status.as_ref();
    let waiting = status
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| w.reason.as_str())
        .filter(|r| !r.is_empty());
    if let Some(reason) = waiting {
        return reason.to_string();
    }
    // A frozen task is still `running` (as `docker ps` says "Up (Paused)"),
    // but not Ready: say so rather than `Running`.
    let running = status.and_then(|s| s.state.as_ref()).is_some_and(|s| s.running.is_some());
    let paused = status.and_then(|s| s.condition("Ready")).is_some_and(|c| c.status == "False" && c.reason == "Paused");
    if running && paused {
        return "Paused".into();
    }
    match status.and_then(|s| s.phase) {
        Some(p) => format!("{p:?}"),
        None => "Pending".into(),
    }
}

/// kubectl's `HumanDuration`: two significant units at most, coarser as
/// the age grows (`45s`, `5m3s`, `47m`, `3h12m`, `2d4h`, `300d`, `2y10d`).
pub fn human_age(d: TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        // Clock skew between client and server.
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, day, year) = (60, 3600, 86_400, 365 * 86_400);
    if secs < 2 * m {
        format!("{secs}s")
    } else if secs < 10 * m {
        let s = secs % m;
        if s == 0 { format!("{}m", secs / m) } else { format!("{}m{s}s", secs / m) }
    } else if secs < 3 * h {
        format!("{}m", secs / m)
    } else if secs < 8 * h {
        let mm = (secs % h) / m;
        if mm == 0 { format!("{}h", secs / h) } else { format!("{}h{mm}m", secs / h) }
    } else if secs < 2 * day {
        format!("{}h", secs / h)
    } else if secs < 8 * day {
        let hh = (secs % day) / h;
        if hh == 0 { format!("{}d", secs / day) } else { format!("{}d{hh}h", secs / day) }
    } else if secs < 2 * year {
        format!("{}d", secs / day)
    } else if secs < 8 * year {
        let dd = (secs % year) / day;
        if dd == 0 { format!("{}y", secs / year) } else { format!("{}y{dd}d", secs / year) }
    } else {
        format!("{}y", secs / year)
    }
}

/// The Table's `columnDefinitions`.
pub fn column_definitions() -> serde_json::Value {
    serde_json::Value::Array(
        COLUMNS
            .iter()
            .map(|c| {
                serde_json::json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}
