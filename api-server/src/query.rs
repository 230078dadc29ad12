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
    /// Who writes (`fieldManager`), for managedFields.
    pub field_manager: Option<String>,
    /// An apply takes the fields of its conflicts (`force=true`).
    pub force: bool,
    /// `fieldValidation`: what to do with unknown fields.
    pub field_validation: FieldValidation,
}

/// `fieldValidation`: unknown or duplicate fields are refused (`Strict`,
/// steward's default, so a typo is never silently dropped), dropped with
/// a warning (`Warn`), or dropped (`Ignore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    #[default]
    Strict,
    Warn,
    Ignore,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!("query parameter {name}: {v:?} is not a boolean"))),
    }
}

impl Params {
    /// The parameters of a Container request.
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        Self::parse_for(raw, steward_schema::selector::SELECTABLE_FIELDS)
    }

    /// The parameters of a request for a kind whose field selectors may
    /// name `selectable`.
    pub fn parse_for(raw: Option<&str>, selectable: &[&str]) -> Result<Params, ApiError> {
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
                    p.field_selector =
                        FieldSelector::parse_for(&v, selectable).map_err(|e| ApiError::BadRequest(format!("fieldSelector: {e}")))?
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
                "fieldManager" => {
                    if v.len() > 128 || v.chars().any(|c| c.is_control()) {
                        return Err(ApiError::BadRequest(
                            "query parameter fieldManager: at most 128 printable characters".into(),
                        ));
                    }
                    p.field_manager = Some(v).filter(|v| !v.is_empty());
                }
                "force" => p.force = parse_bool(&k, &v)?,
                "fieldValidation" => {
                    p.field_validation = match v.as_str() {
                        "Strict" | "" => FieldValidation::Strict,
                        "Warn" => FieldValidation::Warn,
                        "Ignore" => FieldValidation::Ignore,
                        _ => {
                            return Err(ApiError::BadRequest(format!(
                                "query parameter fieldValidation: {v:?} is not Strict, Warn or Ignore"
                            )))
                        }
                    }
                }
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

/// What a delete asks for: Kubernetes' `DeleteOptions`, from the body
/// (what kubectl and client libraries send; `kind` and `apiVersion` may be
/// left out) and from query parameters of the same names (what curl users
/// send). The body wins where both say.
#[derive(Debug, Default, PartialEq)]
pub struct DeleteOptions {
    /// Precondition: the object's resourceVersion must be this.
    pub resource_version: String,
    /// Precondition: the object's uid must be this.
    pub uid: String,
    pub grace_period_seconds: Option<i64>,
    pub dry_run: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteOptionsBody {
    kind: Option<String>,
    grace_period_seconds: Option<i64>,
    preconditions: Option<Preconditions>,
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
    dry_run: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    pub fn parse(body: &[u8], query: Option<&str>) -> Result<DeleteOptions, ApiError> {
        let bad = |m: String| ApiError::BadRequest(m);
        let mut b: DeleteOptionsBody = if body.iter().all(u8::is_ascii_whitespace) {
            DeleteOptionsBody::default()
        } else {
            serde_json::from_slice(body).map_err(|e| bad(format!("invalid DeleteOptions: {e}")))?
        };
        if let Some(k) = b.kind.as_deref().filter(|k| !k.is_empty() && *k != "DeleteOptions") {
            return Err(bad(format!("the body of a delete must be DeleteOptions, not {k}")));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
            .map_err(|e| bad(format!("malformed query string: {e}")))?;
        for (k, v) in pairs {
            match k.as_str() {
                "gracePeriodSeconds" if b.grace_period_seconds.is_none() => {
                    b.grace_period_seconds = Some(
                        v.parse().map_err(|_| bad(format!("query parameter gracePeriodSeconds: {v:?} is not an integer")))?,
                    )
                }
                "propagationPolicy" if b.propagation_policy.is_none() => b.propagation_policy = Some(v),
                _ => {}
            }
        }
        if let Some(g) = b.grace_period_seconds.filter(|g| *g < 0) {
            return Err(bad(format!("DeleteOptions.gracePeriodSeconds: {g}: must be 0 or more")));
        }
        // No object has dependents yet, so every policy deletes the same
        // way; an unknown one is refused as kube-apiserver refuses it.
        if let Some(p) = b.propagation_policy.as_deref().filter(|p| !matches!(*p, "Orphan" | "Background" | "Foreground")) {
            return Err(bad(format!("DeleteOptions.propagationPolicy: {p:?}: must be Orphan, Background or Foreground")));
        }
        if b.orphan_dependents.is_some() && b.propagation_policy.is_some() {
            return Err(bad("DeleteOptions: orphanDependents and propagationPolicy cannot both be set".into()));
        }
        let dry_run = match b.dry_run.as_deref().unwrap_or_default() {
            [] => false,
            [all] if all == "All" => true,
            other => return Err(bad(format!("DeleteOptions.dryRun: {other:?} is not supported (only [\"All\"])"))),
        };
        let pre = b.preconditions.unwrap_or_default();
        Ok(DeleteOptions {
            resource_version: pre.resource_version.unwrap_or_default(),
            uid: pre.uid.unwrap_or_default(),
            grace_period_seconds: b.grace_period_seconds,
            dry_run,
        })
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

#[cfg(test)]
mod delete_options_tests {
    use super::DeleteOptions;

    #[test]
    fn bodies_and_queries() {
        let o = DeleteOptions::parse(br#"{"propagationPolicy":"Background"}"#, None).unwrap();
        assert_eq!(o, DeleteOptions::default());
        let o = DeleteOptions::parse(
            br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0,"preconditions":{"uid":"u","resourceVersion":"7"},"dryRun":["All"]}"#,
            None,
        )
        .unwrap();
        assert_eq!(o, DeleteOptions { resource_version: "7".into(), uid: "u".into(), grace_period_seconds: Some(0), dry_run: true });
        let o = DeleteOptions::parse(b"", Some("gracePeriodSeconds=5&propagationPolicy=Foreground")).unwrap();
        assert_eq!(o.grace_period_seconds, Some(5));
        let o = DeleteOptions::parse(br#"{"gracePeriodSeconds":1}"#, Some("gracePeriodSeconds=5")).unwrap();
        assert_eq!(o.grace_period_seconds, Some(1), "the body wins");
        for (body, query, says) in [
            (&br#"{"gracePeriodSeconds":-1}"#[..], None, "gracePeriodSeconds"),
            (br#"{"propagationPolicy":"Sideways"}"#, None, "propagationPolicy"),
            (b"", Some("gracePeriodSeconds=soon"), "gracePeriodSeconds"),
            (br#"{"kind":"Container"}"#, None, "DeleteOptions"),
            (br#"{"dryRun":["Some"]}"#, None, "dryRun"),
            (b"{", None, "invalid DeleteOptions"),
        ] {
            let e = DeleteOptions::parse(body, query).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
