//! Query parameters of list, watch and write requests.
//!
//! Parsed leniently as Kubernetes does: a leading `?&` and parameters
//! steward does not implement (`fieldValidation`, `propagationPolicy`,
//! `timeout`, ...) are ignored; a parameter it does implement with a bad
//! value is a 400 naming it.

use base64::Engine;
use serde::{Deserialize, Serialize};
use steward_schema::{FieldSelector, LabelSelector};
use steward_store::Key;

use crate::ApiError;

#[derive(Default)]
pub struct Params {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub dry_run: bool,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!("query parameter {name}: {v:?} is not a boolean"))),
    }
}

impl Params {
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
        let mut p = Params::default();
        for (k, v) in pairs {
            match k.as_str() {
                "watch" => p.watch = parse_bool(&k, &v)?,
                "resourceVersion" => p.resource_version = Some(v).filter(|v| !v.is_empty()),
                "labelSelector" => {
                    p.label_selector = LabelSelector::parse(&v).map_err(|e| ApiError::BadRequest(format!("labelSelector: {e}")))?
                }
                "fieldSelector" => {
                    p.field_selector = FieldSelector::parse(&v).map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?
                }
                "limit" => {
                    p.limit = v
                        .parse()
                        .map_err(|_| ApiError::BadRequest(format!("query parameter limit: {v:?} is not a non-negative integer")))?
                }
                "continue" => p.continue_token = Some(v).filter(|v| !v.is_empty()),
                "timeoutSeconds" => {
                    p.timeout_seconds = Some(v.parse().map_err(|_| {
                        ApiError::BadRequest(format!("query parameter timeoutSeconds: {v:?} is not a non-negative integer"))
                    })?)
                }
                "allowWatchBookmarks" => p.allow_bookmarks = parse_bool(&k, &v)?,
                "dryRun" => match v.as_str() {
                    "All" => p.dry_run = true,
                    "" => {}
                    _ => return Err(ApiError::BadRequest(format!("query parameter dryRun: {v:?} is not supported (only All)"))),
                },
                _ => {}
            }
        }
        Ok(p)
    }

    /// The revision a watch starts from: `None` means "current objects
    /// first, then changes" (resourceVersion absent or 0).
    pub fn watch_from(&self) -> Result<Option<i64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|r| *r >= 0)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("query parameter resourceVersion: {v:?} is not a revision"))),
        }
    }
}

/// A `continue` token: where the next page starts and the revision of the
/// first page (the list's resourceVersion, so a watch from it misses
/// nothing that changed while the client paged).
#[derive(Serialize, Deserialize)]
pub struct ContinueToken {
    pub rv: i64,
    pub ns: String,
    pub name: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Result<ContinueToken, ApiError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::BadRequest(format!("query parameter continue: {s:?} is not a valid continue token")))
    }

    pub fn key(&self, resource: &str) -> Key {
        Key::new(resource, &self.ns, &self.name)
    }
}
