//! The semantics of each write, as a pure function of (request, current
//! object, next revision, now). The writer task batches these; keeping
//! them free of I/O lets them be tested by a table of cases.

use std::sync::Arc;

use serde_json::Value;
use steward_schema::Time;

use crate::object::{EventType, Key, Object, Stored};
use crate::{StoreError, MAX_DEPTH, MAX_OBJECT_BYTES, MAX_STORED_BYTES};

/// A write request. Preconditions: a non-empty `resource_version` (and
/// `uid`) must match the stored object, else `Conflict`.
#[derive(Clone, Debug)]
pub enum Write {
    /// Create; `AlreadyExists` when present. Server-set metadata and
    /// `status` in the request are ignored.
    Create { key: Key, object: Object },
    /// Replace labels, annotations, finalizers, ownerReferences and spec,
    /// keeping status and server-set metadata. Writes nothing when nothing
    /// changes. Removing the last finalizer of a deleting object deletes it.
    Update { key: Key, object: Object },
    /// Replace status only.
    UpdateStatus {
        key: Key,
        status: Option<Value>,
        resource_version: String,
    },
    /// Delete now, or mark with deletionTimestamp while finalizers remain.
    Delete {
        key: Key,
        resource_version: String,
        uid: String,
        /// DeleteOptions' `gracePeriodSeconds`: recorded as
        /// `metadata.deletionGracePeriodSeconds` for the controller; a
        /// later delete may shorten it, never lengthen it.
        grace_period_seconds: Option<i64>,
    },
}

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Create { key, .. }
            | Write::Update { key, .. }
            | Write::UpdateStatus { key, .. }
            | Write::Delete { key, .. } => key,
        }
    }
}

/// What a write does to the store.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing changes; the current object is the answer.
    Unchanged(Arc<Stored>),
    /// A new revision: the object is now `object` (absent when deleted).
    Changed {
        event_type: EventType,
        object: Arc<Stored>,
        prev: Option<Arc<Stored>>,
    },
}

fn check_preconditions(current: &Stored, resource_version: &str, uid: &str) -> Result<(), StoreError> {
    if !resource_version.is_empty() && resource_version != current.object.metadata.resource_version {
        return Err(StoreError::Conflict {
            key: current.key.clone(),
            message: format!(
                "the object has been modified; please apply your changes to the latest version and try again \
                 (you sent resourceVersion {resource_version}, the store has {})",
                current.object.metadata.resource_version
            ),
        });
    }
    if !uid.is_empty() && uid != current.object.metadata.uid {
        return Err(StoreError::Conflict {
            key: current.key.clone(),
            message: format!("precondition failed: uid {uid} does not match {}", current.object.metadata.uid),
        });
    }
    Ok(())
}

/// Who a write's growth is charged to, for the size limit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Writer {
    /// Creates and changes of spec, labels, annotations or owners:
    /// capped at [`MAX_OBJECT_BYTES`].
    Client,
    /// Status, deletion and finalizer changes: allowed up to
    /// [`MAX_STORED_BYTES`], so that an object a client was allowed to
    /// create can always be finalized, deleted and reported on (as etcd's
    /// request limit sits above Kubernetes' object limit).
    System,
    /// A deletion adds at most a timestamp: never refused for size, so
    /// that any stored object can be deleted.
    Delete,
}

/// Every write's resulting object passes here before it is committed: the
/// one place its stored size and nesting depth are checked. A write that
/// does not make the object larger (or deeper) than it was always passes:
/// an object stored under older, looser limits can still be changed,
/// finalized and deleted.
fn stored(key: &Key, mut object: Object, revision: i64, prev: Option<&Stored>, writer: Writer) -> Result<Arc<Stored>, StoreError> {
    object.metadata.resource_version = revision.to_string();
    let s = Stored::new(key.clone(), object).map_err(|e| StoreError::Internal(format!("serialising {key}: {e}")))?;
    let limit = match writer {
        Writer::Client => MAX_OBJECT_BYTES,
        Writer::System => MAX_STORED_BYTES,
        Writer::Delete => usize::MAX,
    };
    let len = s.json.len();
    if len > limit && prev.is_none_or(|p| len > p.json.len()) {
        return Err(StoreError::TooLarge { key: key.clone(), size: len, limit });
    }
    let depth = json_depth(&s.json);
    if depth > MAX_DEPTH && prev.is_none_or(|p| depth > json_depth(&p.json)) {
        return Err(too_deep(key, depth));
    }
    Ok(s)
}

fn too_deep(key: &Key, depth: usize) -> StoreError {
    StoreError::Invalid {
        key: key.clone(),
        field: "<object>".into(),
        message: format!("nests {depth} levels of objects and arrays, more than the limit of {MAX_DEPTH}"),
    }
}

/// Refuses an object whose serialised JSON is larger than
/// [`MAX_OBJECT_BYTES`] or nests deeper than [`MAX_DEPTH`]. One pass over
/// bytes the store has just made anyway.
pub fn check_limits(key: &Key, json: &[u8]) -> Result<(), StoreError> {
    if json.len() > MAX_OBJECT_BYTES {
        return Err(StoreError::TooLarge { key: key.clone(), size: json.len(), limit: MAX_OBJECT_BYTES });
    }
    let depth = json_depth(json);
    if depth > MAX_DEPTH {
        return Err(too_deep(key, depth));
    }
    Ok(())
}

/// The deepest nesting of objects and arrays in valid JSON text.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn not_found(key: &Key) -> StoreError {
    StoreError::NotFound { key: key.clone() }
}

/// Applies one write to `current` (the object as of all earlier writes in
/// the batch). `revision` is the revision this write gets if it changes
/// anything; `uid` is a fresh uid for a create.
pub fn apply(
    write: Write,
    current: Option<&Arc<Stored>>,
    revision: i64,
    now: Time,
    uid: impl FnOnce() -> String,
) -> Result<Outcome, StoreError> {
    match write {
        Write::Create { key, mut object } => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists { key });
            }
            let m = &mut object.metadata;
            m.name = key.name.clone();
            m.namespace = key.namespace.clone();
            m.uid = uid();
            m.generation = 1;
            m.creation_timestamp = Some(now);
            m.deletion_timestamp = None;
            m.deletion_grace_period_seconds = None;
            object.status = None;
            Ok(Outcome::Changed {
                event_type: EventType::Added,
                object: stored(&key, object, revision, None, Writer::Client)?,
                prev: None,
            })
        }
        Write::Update { key, object } => {
            let cur = current.ok_or_else(|| not_found(&key))?;
            check_preconditions(cur, &object.metadata.resource_version, &object.metadata.uid)?;
            let old = &cur.object;
            if old.metadata.deletion_timestamp.is_some() {
                if let Some(added) = object.metadata.finalizers.iter().find(|f| !old.metadata.finalizers.contains(f)) {
                    return Err(StoreError::Invalid {
                        key,
                        field: "metadata.finalizers".into(),
                        message: format!("no new finalizers can be added while the object is being deleted (got {added:?})"),
                    });
                }
            }
            let mut new = old.clone();
            new.metadata.labels = object.metadata.labels;
            new.metadata.annotations = object.metadata.annotations;
            new.metadata.finalizers = object.metadata.finalizers;
            new.metadata.owner_references = object.metadata.owner_references;
            new.spec = object.spec;
            new.rest = object.rest;
            new.metadata.managed_fields = object.metadata.managed_fields;
            if new == *old {
                return Ok(Outcome::Unchanged(cur.clone()));
            }
            let spec_changed = new.spec != old.spec || new.rest != old.rest;
            if spec_changed {
                new.metadata.generation += 1;
            }
            let finalizers_only = !spec_changed
                && new.metadata.labels == old.metadata.labels
                && new.metadata.annotations == old.metadata.annotations
                && new.metadata.owner_references == old.metadata.owner_references;
            let writer = if finalizers_only { Writer::System } else { Writer::Client };
            let event_type = if new.metadata.deletion_timestamp.is_some() && new.metadata.finalizers.is_empty() {
                EventType::Deleted
            } else {
                EventType::Modified
            };
            Ok(Outcome::Changed {
                event_type,
                object: stored(&key, new, revision, Some(cur), writer)?,
                prev: Some(cur.clone()),
            })
        }
        Write::UpdateStatus { key, status, resource_version } => {
            let cur = current.ok_or_else(|| not_found(&key))?;
            check_preconditions(cur, &resource_version, "")?;
            if cur.object.status == status {
                return Ok(Outcome::Unchanged(cur.clone()));
            }
            let mut new = cur.object.clone();
            new.status = status;
            Ok(Outcome::Changed {
                event_type: EventType::Modified,
                object: stored(&key, new, revision, Some(cur), Writer::System)?,
                prev: Some(cur.clone()),
            })
        }
        Write::Delete { key, resource_version, uid, grace_period_seconds } => {
            let cur = current.ok_or_else(|| not_found(&key))?;
            check_preconditions(cur, &resource_version, &uid)?;
            let mut new = cur.object.clone();
            let shorter = grace_period_seconds
                .filter(|g| new.metadata.deletion_grace_period_seconds.is_none_or(|cur| *g < cur));
            let event_type = if new.metadata.finalizers.is_empty() {
                EventType::Deleted
            } else if new.metadata.deletion_timestamp.is_none() {
                // As Kubernetes: a deletion is a change of desired state.
                new.metadata.deletion_timestamp = Some(now);
                new.metadata.deletion_grace_period_seconds = grace_period_seconds;
                new.metadata.generation += 1;
                EventType::Modified
            } else if let Some(g) = shorter {
                // `kubectl delete --grace-period=0 --force` after a plain
                // delete: the stop is cut short.
                new.metadata.deletion_grace_period_seconds = Some(g);
                EventType::Modified
            } else {
                return Ok(Outcome::Unchanged(cur.clone()));
            };
            Ok(Outcome::Changed {
                event_type,
                object: stored(&key, new, revision, Some(cur), Writer::Delete)?,
                prev: Some(cur.clone()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> Key {
        Key::new("containers", "default", "web")
    }

    fn obj(spec: Value) -> Object {
        Object {
            api_version: "steward.dev/v1alpha1".into(),
            kind: "Container".into(),
            metadata: Default::default(),
            spec,
            status: None,
            rest: Default::default(),
        }
    }

    fn created(rev: i64) -> Arc<Stored> {
        match apply(Write::Create { key: key(), object: obj(json!({"image": "a"})) }, None, rev, Time::now(), || "u1".into()) {
            Ok(Outcome::Changed { object, .. }) => object,
            other => panic!("{other:?}"),
        }
    }

    fn changed(o: Result<Outcome, StoreError>) -> (EventType, Arc<Stored>) {
        match o {
            Ok(Outcome::Changed { event_type, object, .. }) => (event_type, object),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn create_sets_server_fields_and_drops_status() {
        let mut o = obj(json!({"image": "a"}));
        o.status = Some(json!({"phase": "Running"}));
        o.metadata.uid = "client-chosen".into();
        let (t, s) = changed(apply(Write::Create { key: key(), object: o }, None, 7, Time::now(), || "u1".into()));
        assert_eq!(t, EventType::Added);
        assert_eq!(s.object.metadata.uid, "u1");
        assert_eq!(s.object.metadata.resource_version, "7");
        assert_eq!(s.object.metadata.generation, 1);
        assert_eq!(s.object.status, None);
        assert_eq!(s.revision, 7);
        let e = apply(Write::Create { key: key(), object: obj(json!({})) }, Some(&s), 8, Time::now(), || "u2".into());
        assert!(matches!(e, Err(StoreError::AlreadyExists { .. })));
    }

    #[test]
    fn generation_moves_only_with_spec() {
        let s = created(1);
        let mut o = s.object.clone();
        o.metadata.labels.insert("a".into(), "b".into());
        let (_, s2) = changed(apply(Write::Update { key: key(), object: o }, Some(&s), 2, Time::now(), String::new));
        assert_eq!(s2.object.metadata.generation, 1);
        let mut o = s2.object.clone();
        o.spec = json!({"image": "b"});
        let (_, s3) = changed(apply(Write::Update { key: key(), object: o }, Some(&s2), 3, Time::now(), String::new));
        assert_eq!(s3.object.metadata.generation, 2);
        let (_, s4) = changed(apply(
            Write::UpdateStatus { key: key(), status: Some(json!({"phase": "Running"})), resource_version: String::new() },
            Some(&s3), 4, Time::now(), String::new,
        ));
        assert_eq!(s4.object.metadata.generation, 2);
        assert_eq!(s4.object.spec, json!({"image": "b"}));
    }

    #[test]
    fn unchanged_update_writes_nothing_and_stale_rv_conflicts() {
        let s = created(1);
        let o = apply(Write::Update { key: key(), object: s.object.clone() }, Some(&s), 2, Time::now(), String::new);
        assert!(matches!(o, Ok(Outcome::Unchanged(_))));
        let mut stale = s.object.clone();
        stale.metadata.resource_version = "0".into();
        stale.spec = json!({"image": "z"});
        let o = apply(Write::Update { key: key(), object: stale }, Some(&s), 2, Time::now(), String::new);
        assert!(matches!(o, Err(StoreError::Conflict { .. })));
        let o = apply(Write::UpdateStatus { key: key(), status: None, resource_version: "9".into() }, Some(&s), 2, Time::now(), String::new);
        assert!(matches!(o, Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn delete_waits_for_finalizers() {
        let s = created(1);
        let mut o = s.object.clone();
        o.metadata.finalizers = vec!["steward.dev/containerd".into()];
        let (_, s2) = changed(apply(Write::Update { key: key(), object: o }, Some(&s), 2, Time::now(), String::new));
        let del = || Write::Delete { key: key(), resource_version: String::new(), uid: String::new(), grace_period_seconds: None };
        let (t, s3) = changed(apply(del(), Some(&s2), 3, Time::now(), String::new));
        assert_eq!(t, EventType::Modified);
        assert!(s3.object.metadata.deletion_timestamp.is_some());
        assert_eq!(s3.object.metadata.generation, s2.object.metadata.generation + 1, "deletion bumps generation");
        // A second delete changes nothing.
        assert!(matches!(apply(del(), Some(&s3), 4, Time::now(), String::new), Ok(Outcome::Unchanged(_))));
        // Adding a finalizer now is refused.
        let mut o = s3.object.clone();
        o.metadata.finalizers.push("x.dev/other".into());
        assert!(matches!(apply(Write::Update { key: key(), object: o }, Some(&s3), 4, Time::now(), String::new), Err(StoreError::Invalid { .. })));
        // Removing the last finalizer deletes.
        let mut o = s3.object.clone();
        o.metadata.finalizers.clear();
        let (t, s4) = changed(apply(Write::Update { key: key(), object: o }, Some(&s3), 4, Time::now(), String::new));
        assert_eq!(t, EventType::Deleted);
        assert_eq!(s4.revision, 4);
        // Without finalizers a delete is immediate; a wrong uid conflicts.
        let e = apply(Write::Delete { key: key(), resource_version: String::new(), uid: "other".into(), grace_period_seconds: None }, Some(&s), 2, Time::now(), String::new);
        assert!(matches!(e, Err(StoreError::Conflict { .. })));
        let (t, _) = changed(apply(del(), Some(&s), 2, Time::now(), String::new));
        assert_eq!(t, EventType::Deleted);
    }

    /// An object stored above the cap (by an older, looser limit) can
    /// still be deleted, finalized and have its status written; it cannot
    /// be grown by a client write.
    #[test]
    fn writes_that_do_not_grow_an_oversized_object_pass() {
        let mut o = obj(json!({"image": "a", "pad": "x".repeat(MAX_STORED_BYTES)}));
        o.metadata.finalizers = vec!["steward.dev/containerd".into(), "x.dev/other".into()];
        o.metadata.uid = "u1".into();
        let s = Stored::new(key(), o).unwrap();
        assert!(s.json.len() > MAX_STORED_BYTES);
        let del = Write::Delete { key: key(), resource_version: String::new(), uid: String::new(), grace_period_seconds: None };
        let (_, s2) = changed(apply(del, Some(&s), 2, Time::now(), String::new));
        assert!(s2.object.metadata.deletion_timestamp.is_some());
        let mut grown = s2.object.clone();
        grown.metadata.labels.insert("a".into(), "b".into());
        let e = apply(Write::Update { key: key(), object: grown }, Some(&s2), 3, Time::now(), String::new);
        assert!(matches!(e, Err(StoreError::TooLarge { .. })), "{e:?}");
        let mut o = s2.object.clone();
        o.metadata.finalizers.pop();
        let (t, s3) = changed(apply(Write::Update { key: key(), object: o }, Some(&s2), 3, Time::now(), String::new));
        assert_eq!(t, EventType::Modified);
        let mut o = s3.object.clone();
        o.metadata.finalizers.clear();
        let (t, _) = changed(apply(Write::Update { key: key(), object: o }, Some(&s3), 4, Time::now(), String::new));
        assert_eq!(t, EventType::Deleted);
    }

    /// At the client cap, the system's writes (finalizer add, status,
    /// deletion timestamp) still fit under the ceiling.
    #[test]
    fn system_writes_fit_above_the_client_cap() {
        let s = created(1);
        let room = MAX_OBJECT_BYTES - s.json.len();
        let mut o = s.object.clone();
        o.spec = json!({"image": "a", "pad": "x".repeat(room - 20)});
        let (_, s) = changed(apply(Write::Update { key: key(), object: o }, Some(&s), 2, Time::now(), String::new));
        assert!(s.json.len() <= MAX_OBJECT_BYTES && s.json.len() + 40 > MAX_OBJECT_BYTES, "{}", s.json.len());
        let mut o = s.object.clone();
        o.metadata.finalizers.push("steward.dev/containerd".into());
        let (_, s) = changed(apply(Write::Update { key: key(), object: o }, Some(&s), 3, Time::now(), String::new));
        assert!(s.json.len() > MAX_OBJECT_BYTES);
        let st = Write::UpdateStatus { key: key(), status: Some(json!({"phase": "Running"})), resource_version: String::new() };
        let (_, s) = changed(apply(st, Some(&s), 4, Time::now(), String::new));
        let del = Write::Delete { key: key(), resource_version: String::new(), uid: String::new(), grace_period_seconds: None };
        let (_, s) = changed(apply(del, Some(&s), 5, Time::now(), String::new));
        assert!(s.object.metadata.deletion_timestamp.is_some());
        // A client's label on the object over the cap is refused.
        let mut o = s.object.clone();
        o.metadata.labels.insert("a".into(), "b".into());
        let e = apply(Write::Update { key: key(), object: o }, Some(&s), 6, Time::now(), String::new);
        assert!(matches!(e, Err(StoreError::TooLarge { limit: MAX_OBJECT_BYTES, .. })), "{e:?}");
    }
}
