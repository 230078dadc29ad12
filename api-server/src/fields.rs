//! Field ownership for server-side apply: `metadata.managedFields`, one
//! entry per field manager and operation, each a set of fields in
//! Kubernetes' `FieldsV1` form (`{"f:spec":{"f:image":{}}}`).
//!
//! What is tracked is what users write: `metadata.labels`,
//! `metadata.annotations`, `spec`, and the top-level fields of kinds
//! without a spec (an Event's). Maps are owned field by field; lists are
//! owned whole (atomic), as Kubernetes treats the lists of a custom
//! resource without list-type markers; a scalar, a list, `null` or an
//! empty map is a leaf.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::ApiError;

/// A field: the names from the root (`["spec", "image"]`).
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// The operation a manager's fields came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

/// Top-level keys that are not user-written fields.
const NOT_TRACKED: &[&str] = &["apiVersion", "kind", "metadata", "status"];

/// The leaves a document sets, with their values.
pub fn leaves(doc: &Value) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    let Some(top) = doc.as_object() else { return out };
    let mut leaf = |p: &Path, v: &Value| {
        out.insert(p.clone(), v.clone());
    };
    for (k, v) in top {
        if !NOT_TRACKED.contains(&k.as_str()) {
            walk(&mut vec![k.clone()], v, &mut leaf);
        }
    }
    if let Some(meta) = top.get("metadata").and_then(Value::as_object) {
        for m in ["labels", "annotations"] {
            if let Some(v) = meta.get(m) {
                walk(&mut vec!["metadata".into(), m.into()], v, &mut leaf);
            }
        }
        // Owned whole, as a list.
        if let Some(v) = meta.get("ownerReferences").filter(|v| v.as_array().is_some_and(|a| !a.is_empty())) {
            out.insert(vec!["metadata".into(), "ownerReferences".into()], v.clone());
        }
    }
    out
}

/// Whether any field of `set` overlaps `p` (is it, inside it, or holds
/// it): a few ordered lookups, not a scan.
fn overlaps_any<'a>(set: impl SetLike<'a>, p: &Path) -> bool {
    (1..=p.len()).any(|i| set.has(&p[..i])) || set.first_from(p).is_some_and(|q| q.starts_with(p))
}

/// The ordered sets of paths [`overlaps_any`] looks in.
trait SetLike<'a>: Copy {
    fn has(self, p: &[String]) -> bool;
    fn first_from(self, p: &Path) -> Option<&'a Path>;
}

impl<'a> SetLike<'a> for &'a FieldSet {
    fn has(self, p: &[String]) -> bool {
        self.contains(p)
    }
    fn first_from(self, p: &Path) -> Option<&'a Path> {
        self.range(p.clone()..).next()
    }
}

impl<'a> SetLike<'a> for &'a BTreeMap<Path, Value> {
    fn has(self, p: &[String]) -> bool {
        self.contains_key(p)
    }
    fn first_from(self, p: &Path) -> Option<&'a Path> {
        self.range(p.clone()..).next().map(|(k, _)| k)
    }
}

/// Calls `leaf` with every leaf under `path`: a value that is not a
/// non-empty map.
fn walk(path: &mut Path, v: &Value, leaf: &mut impl FnMut(&Path, &Value)) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                path.push(k.clone());
                walk(path, x, leaf);
                path.pop();
            }
        }
        _ => leaf(path, v),
    }
}

/// The value at `path`, if there is one.
pub fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, k| v.as_object()?.get(k))
}

/// Sets the value at `path`, making the maps on the way.
pub fn set(doc: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = doc;
    for k in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(m) = cur.as_object_mut() else { return };
        cur = m.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(last.clone(), value);
    }
}

/// Removes the value at `path` (and nothing else).
pub fn remove(doc: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = doc;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Whether two fields overlap: the same, or one inside the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A field set in `FieldsV1` form.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for k in path {
            let next = cur.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
            let Some(m) = next.as_object_mut() else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

/// A `FieldsV1` value read back: every path down to an empty map (or a
/// `.` entry, a field owned as well as some of its children).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(prefix: &Path, v: &Value, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !prefix.is_empty() {
            out.insert(prefix.clone());
            return;
        }
        for (k, x) in m {
            if k == "." {
                out.insert(prefix.clone());
            } else if let Some(name) = k.strip_prefix("f:") {
                let mut p = prefix.clone();
                p.push(name.to_string());
                go(&p, x, out);
            } else if !prefix.is_empty() {
                // k:{...} or v:... (list items, which steward owns whole).
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = FieldSet::new();
    go(&Vec::new(), v, &mut out);
    out
}

/// The entries of a stored object's `metadata.managedFields`.
pub fn read(doc: &Value) -> Vec<Entry> {
    let Some(list) = doc.pointer("/metadata/managedFields").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: match e.get("operation").and_then(Value::as_str) {
                    Some("Apply") => Operation::Apply,
                    _ => Operation::Update,
                },
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
                time: e.get("time").and_then(Value::as_str).unwrap_or_default().to_string(),
                fields: from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

/// Entries as `metadata.managedFields` (`None` when there are none).
pub fn write(entries: &[Entry]) -> Option<Value> {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            json!({"manager": e.manager, "operation": e.operation.as_str(), "apiVersion": e.api_version,
                   "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)})
        })
        .collect();
    (!list.is_empty()).then_some(Value::Array(list))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records that `manager` set `fields` by `op`: its entry gets them (its
/// time moves only when its set changes), and every other manager loses
/// `strip` (an update takes what it changed; an apply only what it forced:
/// a field two appliers set to the same value is both of theirs).
fn take(entries: &mut Vec<Entry>, manager: &str, op: Operation, api_version: &str, fields: FieldSet, strip: &FieldSet, replace: bool) {
    for e in entries.iter_mut().filter(|e| !(e.manager == manager && e.operation == op)) {
        e.fields.retain(|p| !overlaps_any(strip, p));
    }
    match entries.iter_mut().find(|e| e.manager == manager && e.operation == op) {
        Some(e) => {
            let next: FieldSet = if replace { fields } else { e.fields.union(&fields).cloned().collect() };
            if next != e.fields || e.api_version != api_version {
                e.fields = next;
                e.api_version = api_version.to_string();
                e.time = now();
            }
        }
        None => entries.push(Entry { manager: manager.into(), operation: op, api_version: api_version.into(), time: now(), fields }),
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// The managed fields after a create, update or patch (operation
/// `Update`) by `manager` turned `old` into `new`: the fields it set or
/// changed become its own; removed fields leave every manager.
pub fn after_update(old: Option<&Value>, new: &Value, manager: &str, api_version: &str) -> Option<Value> {
    let mut entries = old.map(read).unwrap_or_default();
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: FieldSet = after.iter().filter(|(p, v)| before.get(*p) != Some(*v)).map(|(p, _)| p.clone()).collect();
    // Fields that are gone are nobody's.
    for e in entries.iter_mut() {
        e.fields.retain(|p| overlaps_any(&after, p));
    }
    if !changed.is_empty() {
        take(&mut entries, manager, Operation::Update, api_version, changed.clone(), &changed, false);
    }
    entries.retain(|e| !e.fields.is_empty());
    write(&entries)
}

/// The managed fields of an object `manager` creates (operation
/// `Update`): every field it set, found without copying a value.
pub fn created(obj: &steward_store::Object, manager: &str, api_version: &str) -> Option<Value> {
    let mut fields = FieldSet::new();
    let mut leaf = |p: &Path, _: &Value| {
        fields.insert(p.clone());
    };
    if !obj.spec.is_null() {
        walk(&mut vec!["spec".to_string()], &obj.spec, &mut leaf);
    }
    for (k, v) in &obj.rest {
        walk(&mut vec![k.clone()], v, &mut leaf);
    }
    let m = &obj.metadata;
    for (map, keys) in [("labels", m.labels.keys()), ("annotations", m.annotations.keys())] {
        for k in keys {
            fields.insert(vec!["metadata".into(), map.into(), k.clone()]);
        }
    }
    if !m.owner_references.is_empty() {
        fields.insert(vec!["metadata".into(), "ownerReferences".into()]);
    }
    let entry = Entry { manager: manager.into(), operation: Operation::Update, api_version: api_version.into(), time: now(), fields };
    write(&[entry])
}

/// Whether the ownership an apply by `manager` gives (`merged`, against
/// `current`) must be recorded even though no value changed: `manager`
/// had no entry yet, or it now shares a field another manager owns.
pub fn ownership_matters(current: &Value, merged: &Value, manager: &str) -> bool {
    let mine = |e: &&Entry| e.manager == manager && e.operation == Operation::Apply;
    let (old, new) = (read(current), read(merged));
    let (Some(before), Some(after)) = (old.iter().find(mine), new.iter().find(mine)) else {
        return new.iter().any(|e| mine(&e));
    };
    after
        .fields
        .difference(&before.fields)
        .any(|p| new.iter().filter(|e| !mine(e)).any(|e| overlaps_any(&e.fields, p)))
}

/// A field another manager owns with another value.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: Path,
}

/// Server-side apply of `config` by `manager` to `current` (the stored
/// object, or `None` to create): the object to store, with its managed
/// fields, or the conflicts (unless `force`, which takes those fields).
pub fn apply(current: Option<&Value>, config: &Value, manager: &str, api_version: &str, force: bool) -> Result<Value, Vec<Conflict>> {
    let mut entries = current.map(read).unwrap_or_default();
    let applied = leaves(config);
    let fields: FieldSet = applied.keys().cloned().collect();
    let mut result = current.cloned().unwrap_or_else(|| json!({}));
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !(e.manager == manager && e.operation == Operation::Apply)) {
        for (p, v) in &applied {
            // Equal values are shared, not fought over.
            if overlaps_any(&e.fields, p) && get(&result, p) != Some(v) {
                conflicts.push(Conflict { manager: e.manager.clone(), api_version: e.api_version.clone(), path: p.clone() });
            }
        }
    }
    conflicts.sort_by(|a, b| (&a.path, &a.manager).cmp(&(&b.path, &b.manager)));
    conflicts.dedup_by(|a, b| a.path == b.path && a.manager == b.manager);
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // What this manager applied before and no longer does goes, unless
    // another manager has it too.
    let before = entries.iter().find(|e| e.manager == manager && e.operation == Operation::Apply).map(|e| e.fields.clone()).unwrap_or_default();
    for p in before.difference(&fields) {
        let shared = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == Operation::Apply))
            .any(|e| overlaps_any(&e.fields, p));
        if !shared && !overlaps_any(&fields, p) {
            remove(&mut result, p);
        }
    }
    for (p, v) in &applied {
        set(&mut result, p, v.clone());
    }
    for k in ["apiVersion", "kind"] {
        if let Some(v) = config.get(k) {
            result[k] = v.clone();
        }
    }
    if let Some(m) = config.get("metadata").and_then(Value::as_object) {
        for k in ["name", "namespace", "resourceVersion", "uid", "generateName"] {
            if let Some(v) = m.get(k) {
                set(&mut result, &["metadata".into(), k.into()], v.clone());
            }
        }
        // Finalizers are a set others add to (controllers): the manifest's
        // join them, and an apply never removes one.
        if let Some(add) = m.get("finalizers").and_then(Value::as_array) {
            let mut all: Vec<Value> = get(&result, &["metadata".into(), "finalizers".into()]).and_then(Value::as_array).cloned().unwrap_or_default();
            for f in add {
                if !all.contains(f) {
                    all.push(f.clone());
                }
            }
            set(&mut result, &["metadata".into(), "finalizers".into()], Value::Array(all));
        }
    }
    let forced: FieldSet = conflicts.iter().map(|c| c.path.clone()).collect();
    take(&mut entries, manager, Operation::Apply, api_version, fields, &forced, true);
    match write(&entries) {
        Some(mf) => set(&mut result, &["metadata".into(), "managedFields".into()], mf),
        None => remove(&mut result, &["metadata".into(), "managedFields".into()]),
    }
    Ok(result)
}

/// kubectl's client-side apply, whose fields a server-side apply takes
/// over without conflict (see [`from_client_side_apply`]).
const CLIENT_SIDE_APPLY: &str = "kubectl-client-side-apply";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether `conflicts` are only kubectl's client-side apply's fields that
/// its last-applied annotation holds: then a server-side apply takes them
/// over without `force`, as kube-apiserver lets `kubectl apply
/// --server-side` follow `kubectl apply`.
pub fn from_client_side_apply(current: &Value, conflicts: &[Conflict]) -> bool {
    let Some(last) = current
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return false;
    };
    let last: FieldSet = leaves(&last).into_keys().collect();
    conflicts.iter().all(|c| c.manager == CLIENT_SIDE_APPLY && last.iter().any(|l| overlaps(l, &c.path)))
}

/// The 409 of an apply's conflicts, worded as kube-apiserver words it
/// (kubectl prints the message and its advice).
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let field = |p: &Path| format!(".{}", p.join("."));
    let lines: Vec<String> =
        conflicts.iter().map(|c| format!("conflict with {:?} using {}: {}", c.manager, c.api_version, field(&c.path))).collect();
    let message = match lines.as_slice() {
        [one] => format!("Apply failed with 1 conflict: {one}"),
        many => format!("Apply failed with {} conflicts: {}", many.len(), many.join("\n")),
    };
    let causes = conflicts
        .iter()
        .map(|c| steward_schema::StatusCause {
            field: field(&c.path),
            reason: "FieldManagerConflict".into(),
            message: format!("conflict with {:?} using {}", c.manager, c.api_version),
        })
        .collect();
    ApiError::ApplyConflict { message, causes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn leaves_and_fields_v1_round_trip() {
        let doc = json!({"apiVersion": "x", "metadata": {"name": "a", "labels": {"app": "web"}},
            "spec": {"image": "i", "env": [{"name": "A"}], "resources": {"limits": {"cpu": "1"}}, "empty": {}}, "status": {"phase": "x"}});
        let l: FieldSet = leaves(&doc).into_keys().collect();
        let want: FieldSet = ["metadata.labels.app", "spec.image", "spec.env", "spec.resources.limits.cpu", "spec.empty"].iter().map(|s| p(s)).collect();
        assert_eq!(l, want);
        let v1 = to_fields_v1(&l);
        assert_eq!(v1["f:spec"]["f:resources"]["f:limits"]["f:cpu"], json!({}));
        assert_eq!(from_fields_v1(&v1), l);
        // kube-apiserver's own forms: "." and list keys.
        let kube = json!({"f:spec": {".": {}, "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}}}}});
        assert_eq!(from_fields_v1(&kube), [p("spec"), p("spec.env")].into_iter().collect());
    }

    #[test]
    fn apply_owns_removes_and_conflicts() {
        let a = json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"image": "i1", "args": ["x"]}});
        let o1 = apply(None, &a, "alice", "v", false).unwrap();
        assert_eq!(o1["spec"]["image"], "i1");
        assert_eq!(o1["metadata"]["managedFields"][0]["manager"], "alice");
        // Alice stops applying args: they go. Bob's label is his.
        let o2 = apply(Some(&o1), &json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"image": "i1"}}), "alice", "v", false).unwrap();
        assert!(o2["spec"].get("args").is_none(), "{o2}");
        // Bob adds a label with an update (kubectl label): it is his.
        let mut o3 = o2.clone();
        set(&mut o3, &p("metadata.labels.b"), json!("2"));
        o3["metadata"]["managedFields"] = after_update(Some(&o2), &o3, "bob", "v").unwrap();
        let bobs = read(&o3).into_iter().find(|e| e.manager == "bob").unwrap();
        assert_eq!(bobs.fields, [p("metadata.labels.b")].into_iter().collect());
        // Bob applies another image: a conflict with alice, named.
        let bob = json!({"metadata": {"name": "w"}, "spec": {"image": "i2"}});
        let c = apply(Some(&o3), &bob, "bob", "v", false).unwrap_err();
        assert_eq!(c, vec![Conflict { manager: "alice".into(), api_version: "v".into(), path: p("spec.image") }]);
        // The same value is shared, not a conflict.
        assert!(apply(Some(&o3), &json!({"spec": {"image": "i1"}}), "bob", "v", false).is_ok());
        // Forced: bob takes the image; alice keeps her label.
        let o4 = apply(Some(&o3), &bob, "bob", "v", true).unwrap();
        assert_eq!(o4["spec"]["image"], "i2");
        let entries = read(&o4);
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.contains(&p("spec.image")) && alice.fields.contains(&p("metadata.labels.a")));
        // An unchanged apply leaves managedFields (and their times) as they were.
        let again = apply(Some(&o4), &bob, "bob", "v", false).unwrap();
        assert_eq!(again["metadata"]["managedFields"], o4["metadata"]["managedFields"]);
        let e = conflict_error(&c).to_string();
        assert!(e.contains("Apply failed with 1 conflict: conflict with \"alice\" using v: .spec.image"), "{e}");
    }

    #[test]
    fn client_side_apply_fields_pass_to_server_side_apply() {
        let cur = json!({"metadata": {"annotations": {LAST_APPLIED: "{\"spec\":{\"image\":\"a\"}}"}}, "spec": {"image": "a", "args": ["x"]}});
        let csa = |path: &str| Conflict { manager: CLIENT_SIDE_APPLY.into(), api_version: "v".into(), path: p(path) };
        assert!(from_client_side_apply(&cur, &[csa("spec.image")]));
        assert!(!from_client_side_apply(&cur, &[csa("spec.args")]), "not in the last-applied configuration");
        let other = Conflict { manager: "someone".into(), api_version: "v".into(), path: p("spec.image") };
        assert!(!from_client_side_apply(&cur, &[other]));
        assert!(!from_client_side_apply(&json!({"spec": {}}), &[csa("spec.image")]));
    }

    #[test]
    fn equal_values_are_co_owned_and_stay_with_the_other_applier() {
        let alice = apply(None, &json!({"metadata": {"name": "w", "labels": {"a": "1"}}, "spec": {"image": "i"}}), "alice", "v", false).unwrap();
        let both = apply(Some(&alice), &json!({"metadata": {"labels": {"a": "1", "b": "2"}}}), "bob", "v", false).unwrap();
        // Bob drops a: alice still applies it, so it stays.
        let after = apply(Some(&both), &json!({"metadata": {"labels": {"b": "2"}}}), "bob", "v", false).unwrap();
        assert_eq!(after["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        // Owner references are applied and owned; finalizers join the set.
        let mut cur = after.clone();
        cur["metadata"]["finalizers"] = json!(["steward.dev/cleanup"]);
        let owned = apply(
            Some(&cur),
            &json!({"metadata": {"finalizers": ["x.dev/f"], "ownerReferences": [{"apiVersion": "v", "kind": "K", "name": "o", "uid": "u"}]}}),
            "op",
            "v",
            false,
        )
        .unwrap();
        assert_eq!(owned["metadata"]["finalizers"], json!(["steward.dev/cleanup", "x.dev/f"]));
        assert_eq!(owned["metadata"]["ownerReferences"][0]["name"], "o");
        let op = read(&owned).into_iter().find(|e| e.manager == "op").unwrap();
        assert!(op.fields.contains(&p("metadata.ownerReferences")));
    }

    #[test]
    fn many_fields_are_handled_in_ordered_lookups() {
        let labels: serde_json::Map<String, Value> = (0..20_000).map(|i| (format!("k{i}"), json!("v"))).collect();
        let big = json!({"metadata": {"name": "w", "labels": labels}, "spec": {"image": "i"}});
        let o = apply(None, &big, "alice", "v", false).unwrap();
        let mut changed = o.clone();
        changed["metadata"]["labels"]["k1"] = json!("w");
        let entries = read(&json!({"metadata": {"managedFields": after_update(Some(&o), &changed, "bob", "v")}}));
        let bob = entries.iter().find(|e| e.manager == "bob").unwrap();
        assert_eq!(bob.fields, [p("metadata.labels.k1")].into_iter().collect());
        assert_eq!(entries.iter().find(|e| e.manager == "alice").unwrap().fields.len(), 20_000);
    }

    #[test]
    fn a_create_owns_what_after_update_would_give_it() {
        let mut obj = steward_store::Object {
            api_version: "v".into(),
            kind: "K".into(),
            metadata: Default::default(),
            spec: json!({"image": "i", "env": [{"name": "A"}], "resources": {"limits": {"cpu": "1"}}}),
            status: None,
            rest: Default::default(),
        };
        obj.metadata.labels.insert("app".into(), "web".into());
        obj.metadata.annotations.insert("note".into(), "x".into());
        let json = serde_json::to_value(&obj).unwrap();
        let a = read(&json!({"metadata": {"managedFields": created(&obj, "m", "v")}}));
        let b = read(&json!({"metadata": {"managedFields": after_update(None, &json, "m", "v")}}));
        assert_eq!(a[0].fields, b[0].fields);
        assert_eq!(a[0].fields.len(), 5);
    }
}
