//! Label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k`) and field
//! selectors (`metadata.name=web,status.phase!=Running`).

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid {kind} selector {input:?}: {message}")]
pub struct SelectorError {
    pub kind: &'static str,
    pub input: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |message: String| SelectorError {
            kind: "label",
            input: input.to_string(),
            message,
        };
        let mut reqs = Vec::new();
        if input.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for term in split_terms(input) {
            let t = term.trim();
            if t.is_empty() {
                return Err(err("empty term".into()));
            }
            let key_checked = |k: &str| -> Result<String, SelectorError> {
                let k = k.trim();
                if valid_key(k) {
                    Ok(k.to_string())
                } else {
                    Err(err(format!("invalid label key {k:?}")))
                }
            };
            let set_op = |t: &str, op: &str| -> Option<(String, String)> {
                let idx = t.find(op)?;
                let (k, rest) = (t[..idx].trim(), t[idx + op.len()..].trim());
                (!k.is_empty() && !k.contains(' ') && rest.starts_with('('))
                    .then(|| (k.to_string(), rest.to_string()))
            };
            let parse_set = |rest: &str| -> Result<Vec<String>, SelectorError> {
                let inner = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| err(format!("expected (v1,v2) in {t:?}")))?;
                Ok(inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect())
            };
            let req = if let Some((k, rest)) = set_op(t, " notin ") {
                Requirement::NotIn(key_checked(&k)?, parse_set(&rest)?)
            } else if let Some((k, rest)) = set_op(t, " in ") {
                Requirement::In(key_checked(&k)?, parse_set(&rest)?)
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotEq(key_checked(k)?, v.trim().to_string())
            } else if let Some((k, v)) = t.split_once("==") {
                Requirement::Eq(key_checked(k)?, v.trim().to_string())
            } else if let Some((k, v)) = t.split_once('=') {
                Requirement::Eq(key_checked(k)?, v.trim().to_string())
            } else if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(key_checked(k)?)
            } else {
                Requirement::Exists(key_checked(t)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Field paths a field selector may name.
pub const SELECTABLE_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.phase"];

/// A parsed field selector over [`SELECTABLE_FIELDS`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// A field selector over Containers' [`SELECTABLE_FIELDS`].
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Self::parse_for(input, SELECTABLE_FIELDS)
    }

    /// A field selector over `selectable` (a kind's own fields).
    pub fn parse_for(input: &str, selectable: &[&str]) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError {
                    kind: "field",
                    input: input.into(),
                    message: format!("{term:?} is not field=value or field!=value"),
                });
            };
            let field = field.trim();
            if !selectable.contains(&field) {
                return Err(SelectorError {
                    kind: "field",
                    input: input.into(),
                    message: format!(
                        "field {field:?} is not selectable (supported: {})",
                        selectable.join(", ")
                    ),
                });
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// `value_of` returns the object's value of a selectable field ("" when unset).
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.reqs
            .iter()
            .all(|(f, eq, v)| (value_of(f) == *v) == *eq)
    }

    /// The single `metadata.name=X` this selector pins, if any (lets a list
    /// answer from one lookup).
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(!m("app!=web"));
        assert!(m("tier in (front,back)"));
        assert!(!m("tier in (back)"));
        assert!(m("tier notin (back)"));
        assert!(!m("tier notin (front, back)"));
        assert!(m("notin notin (x)"));
        assert!(m("app"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app=web,tier in (front),!missing"));
        assert!(!m("app=web,tier in (back)"));
    }

    #[test]
    fn label_selector_errors() {
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn field_selector() {
        let f = FieldSelector::parse("metadata.name=web,status.phase!=Failed").unwrap();
        assert_eq!(f.pinned_name(), Some("web"));
        assert!(f.matches(|p| if p == "metadata.name" { "web".into() } else { "Running".into() }));
        assert!(!f.matches(|p| if p == "metadata.name" { "web".into() } else { "Failed".into() }));
        let e = FieldSelector::parse("spec.image=x").unwrap_err();
        assert!(e.message.contains("spec.image"), "{e}");
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
