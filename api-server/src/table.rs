//! `meta.k8s.io/v1` Table output, what `kubectl get` asks for (`Accept:
//! application/json;as=Table;v=v1;g=meta.k8s.io`): the columns of
//! `steward get` (`steward_schema::table`), wide ones at priority 1, ages
//! humanised here since kubectl prints cells verbatim.

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use crate::registry::Strategy;

pub const CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether the client takes a v1 Table: one media range of its Accept
/// says `as=Table`, `g=meta.k8s.io`, `v=v1` (v1beta1 alone is not served;
/// such a client gets plain JSON, its fallback).
pub fn wanted(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    accept.split(',').any(|range| {
        let params: Vec<String> = range.split(';').skip(1).map(|p| p.trim().to_ascii_lowercase().replace(' ', "")).collect();
        let has = |p: &str| params.iter().any(|x| x == p);
        has("as=table") && has("g=meta.k8s.io") && has("v=v1")
    })
}

/// What each row carries of its object (`includeObject`): kubectl asks
/// for nothing, so the default, `Metadata`, is a PartialObjectMetadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn from_query(q: Option<&str>) -> Include {
        let v = q
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("includeObject="))
            .unwrap_or("Metadata");
        match v {
            "None" => Include::None,
            "Object" => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// One row for the object `raw` (its stored JSON); `None` if it does not
/// decode (never for what the store holds).
pub fn row(kind: &dyn Strategy, raw: &[u8], include: Include, now: chrono::DateTime<chrono::Utc>) -> Option<Value> {
    let obj: Value = serde_json::from_slice(raw).ok()?;
    let cells = kind.cells(&obj, now)?;
    let object = match include {
        Include::None => Value::Null,
        Include::Object => obj,
        Include::Metadata => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}),
    };
    Some(json!({"cells": cells, "object": object}))
}

/// A Table of `rows`; `columns` false leaves the definitions out (the
/// events of a watch after the first, as kube-apiserver does).
pub fn table(kind: &dyn Strategy, rows: Vec<Value>, resource_version: &str, cont: Option<&str>, columns: bool) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": if columns { kind.columns() } else { json!([]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().expect("header"));
        h
    }

    #[test]
    fn only_a_v1_table_request_gets_one() {
        assert!(wanted(&accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")));
        assert!(wanted(&accept("application/json; as=Table; g=meta.k8s.io; v=v1")));
        assert!(!wanted(&accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")));
        assert!(!wanted(&accept("application/json")));
        assert!(!wanted(&HeaderMap::new()));
    }

    #[test]
    fn rows_carry_the_get_columns_and_partial_metadata() {
        let raw = br#"{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{"name":"web","namespace":"default","resourceVersion":"7","creationTimestamp":"2026-11-30T10:00:00Z"},"spec":{"image":"busybox"},"status":{"phase":"Running","restartCount":2,"ip":"10.88.0.2","conditions":[{"type":"Ready","status":"True"}]}}"#;
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:01:30Z").expect("time").with_timezone(&chrono::Utc);
        let r = row(&crate::containers::Containers, raw, Include::Metadata, now).expect("row");
        assert_eq!(r["cells"], json!(["web", "1/1", "Running", 2, "90s", "busybox", "<none>", "<none>", "10.88.0.2"]));
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["metadata"]["namespace"], "default");
        assert!(r["object"].get("spec").is_none());
        assert_eq!(row(&crate::containers::Containers, raw, Include::Object, now).expect("row")["object"]["spec"]["image"], "busybox");
        let t = table(&crate::containers::Containers, vec![r], "7", None, true);
        let names: Vec<&str> = t["columnDefinitions"].as_array().expect("cols").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Age", "Image", "Container-ID", "PID", "IP"]);
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(Include::from_query(Some("watch=1&includeObject=None")), Include::None);
    }
}
