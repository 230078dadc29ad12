//! Parsing of manifests: multi-document YAML or JSON, including `List`
//! documents (what `steward get -o json` prints), into typed objects.
//!
//! Syntax errors carry the parser's line and column; type errors and
//! unknown fields carry the field path (`spec.env[0].name`).

use serde::Deserialize;

use crate::container::Container;

/// One object found in a manifest. `index` is the document's position in
/// its file (0-based), counting `---` separated documents.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub index: usize,
    pub object: Container,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("document {index}: {message}")]
pub struct ManifestError {
    pub index: usize,
    pub message: String,
}

/// Converts one parsed value into a `Container`, naming the field path of
/// any type error or unknown field.
pub fn container_from_value(v: serde_yaml::Value) -> Result<Container, String> {
    object_from_value(v)
}

/// Converts one parsed value into an object of any kind, naming the field
/// path of any type error or unknown field.
pub fn object_from_value<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(c) => Ok(c),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            Err(if path == "." || path.is_empty() {
                inner
            } else {
                format!("{path}: {inner}")
            })
        }
    }
}

/// Parses a JSON body into a `Container`, naming the line and column of a
/// syntax error or the field path of a type error.
pub fn container_from_json(body: &[u8]) -> Result<Container, String> {
    object_from_json(body)
}

/// Parses a JSON body into an object of any kind, naming the line and
/// column of a syntax error or the field path of a type error.
pub fn object_from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(c) => Ok(c),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || path == "." {
                Err(format!("invalid JSON: {inner}"))
            } else {
                Err(format!("{path}: {}", strip_position(&inner.to_string())))
            }
        }
    }
}

fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// Parses every document of a YAML or JSON text. An empty document is
/// skipped; a syntax error ends the parse (nothing after it can be trusted).
pub fn parse_manifests(text: &str) -> Vec<Result<Document, ManifestError>> {
    let mut out = Vec::new();
    // A file of many documents may hold many nodes: only the depth bound
    // applies here (the CLI reads files its user chose).
    if let Err(message) = yaml_nesting_within(text, MAX_YAML_DEPTH, usize::MAX) {
        out.push(Err(ManifestError { index: 0, message }));
        return out;
    }
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(ManifestError {
                    index,
                    message: format!("invalid YAML: {e}"),
                }));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if kind == "List" || kind.ends_with("List") {
            let items = match value.get("items").and_then(|i| i.as_sequence()) {
                Some(items) => items.clone(),
                None => {
                    out.push(Err(ManifestError { index, message: "items: a List needs an items array".into() }));
                    continue;
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                out.push(
                    container_from_value(item)
                        .map(|object| Document { index, object })
                        .map_err(|m| ManifestError { index, message: format!("items[{i}].{m}") }),
                );
            }
            continue;
        }
        out.push(
            container_from_value(value)
                .map(|object| Document { index, object })
                .map_err(|message| ManifestError { index, message }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_with_errors() {
        let text = "\
apiVersion: steward.dev/v1alpha1
kind: Container
metadata: {name: a}
spec: {image: busybox}
---
---
apiVersion: steward.dev/v1alpha1
kind: Container
metadata: {name: b}
spec: {image: busybox, colour: red}
---
apiVersion: steward.dev/v1alpha1
kind: Container
metadata: {name: c}
spec:
  image: busybox
  env: [{name: 3}]
";
        let docs = parse_manifests(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].as_ref().unwrap().object.metadata.name, "a");
        let e1 = docs[1].as_ref().unwrap_err();
        assert_eq!(e1.index, 2);
        assert!(e1.message.starts_with("spec.colour: unknown field `colour`"), "{}", e1.message);
        let e2 = docs[2].as_ref().unwrap_err();
        assert_eq!(e2.index, 3);
        // YAML turns `3` into a string-compatible scalar, so this one parses.
        assert!(e2.message.contains("spec.env[0]") || docs[2].is_ok(), "{}", e2.message);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let docs = parse_manifests("metadata: {name: a\nspec: [\n");
        let e = docs[0].as_ref().unwrap_err();
        assert!(e.message.contains("line"), "{}", e.message);
        assert!(e.message.contains("column"), "{}", e.message);
    }

    #[test]
    fn json_list_round_trip() {
        let text = r#"{"apiVersion":"steward.dev/v1alpha1","kind":"ContainerList","metadata":{"resourceVersion":"5"},
          "items":[{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{"name":"x","uid":"u"},"spec":{"image":"i"},"status":{"restartCount":1}}]}"#;
        let docs = parse_manifests(text);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].as_ref().unwrap().object.metadata.name, "x");
    }

    #[test]
    fn json_body_errors() {
        let e = container_from_json(b"{\"spec\": {\"image\": 1}}").unwrap_err();
        assert!(e.starts_with("spec.image: invalid type"), "{e}");
        let e = container_from_json(b"{\"spec\": ").unwrap_err();
        assert!(e.contains("line 1 column"), "{e}");
        let e = container_from_json(b"{\"metadata\": {\"nmae\": \"x\"}}").unwrap_err();
        assert!(e.starts_with("metadata.nmae: unknown field `nmae`"), "{e}");
    }
}

/// Parses one YAML document whose aliases, expanded, stay within `budget`
/// (bytes of scalars plus [`NODE_COST`] per node: roughly the memory the
/// parsed value takes), as go-yaml refuses "excessive aliasing". A small document whose anchors are referenced many times
/// (a "billion laughs") would otherwise expand into gigabytes: here the
/// expansion is first walked without building anything, and abandoned
/// as soon as it passes the budget.
pub fn yaml_value_bounded(text: &str, budget: usize) -> Result<serde_yaml::Value, String> {
    check_yaml_shape(text)?;
    if text.contains('*') {
        let left = std::cell::Cell::new(budget);
        serde::de::DeserializeSeed::deserialize(Budget(&left), serde_yaml::Deserializer::from_str(text))
            .map_err(|e| format!("invalid YAML: {e}"))?;
    }
    serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))
}

/// What one node of a parsed YAML value costs, in budget bytes (a
/// `serde_yaml::Value` is 80 bytes before its contents).
pub const NODE_COST: usize = 64;

/// Walks a document, charging `left` for every node and scalar byte.
#[derive(Clone, Copy)]
struct Budget<'a>(&'a std::cell::Cell<usize>);

impl Budget<'_> {
    fn charge<E: serde::de::Error>(self, n: usize) -> Result<(), E> {
        match self.0.get().checked_sub(n + NODE_COST) {
            Some(rest) => {
                self.0.set(rest);
                Ok(())
            }
            None => Err(E::custom("the document's aliases expand beyond the request size limit (excessive aliasing)")),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Budget<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Budget<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(1)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(8)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(8)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(8)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.charge(v.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.charge(1)?;
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        let ((), v) = data.variant_seed(self)?;
        v.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod bounded_yaml_tests {
    use super::yaml_value_bounded;

    /// About 9 KB that expands to 10^8 nodes, and stays under serde_yaml's
    /// own repetition limit (100 alias jumps per event).
    pub(crate) fn laughs() -> String {
        let a = vec!["x"; 1000].join(",");
        let b = vec!["*a"; 100].join(",");
        let c = vec!["*b"; 1000].join(",");
        format!("a: &a [{a}]\nb: &b [{b}]\nc: [{c}]\n")
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        let t = std::time::Instant::now();
        let e = yaml_value_bounded(&laughs(), 3 << 20).unwrap_err();
        assert!(e.contains("excessive aliasing"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn modest_aliases_are_fine() {
        let v = yaml_value_bounded("a: &x {b: 1}\nc: *x\nd: 'x*y'\n", 1000).unwrap();
        assert_eq!(v["c"]["b"], serde_yaml::Value::from(1));
    }
}

/// Deepest nesting of mappings and sequences a YAML text may have before
/// it is parsed: the store keeps at most 64 levels; the margin covers the
/// scan's over-estimates. libyaml's time grows with the square of the
/// nesting depth, so a deeper text is refused before it reaches it.
pub const MAX_YAML_DEPTH: usize = 100;

/// Most nodes (scalars, mappings, sequences) a YAML request body may have:
/// parsed values take ~100 times the text's size, so a body of tiny
/// items is refused before it is built.
pub const MAX_YAML_NODES: usize = 100_000;

/// [`MAX_YAML_DEPTH`] and [`MAX_YAML_NODES`] for one request body.
pub fn check_yaml_shape(text: &str) -> Result<(), String> {
    yaml_nesting_within(text, MAX_YAML_DEPTH, MAX_YAML_NODES)
}

/// One linear pass over YAML text that refuses it when it nests deeper
/// than `max_depth` or has more than `max_nodes` nodes, without building
/// anything. Block nesting is counted by indentation levels plus compact
/// `- `/`? ` indicators, flow nesting by brackets outside quoted scalars
/// and comments; block scalars (`|`, `>`) are skipped. It errs towards
/// counting more (never fewer) levels than the parser sees, except that a
/// sequence at its parent key's indentation is not counted as a level
/// (at most halving the count, so deep documents are still refused).
pub fn yaml_nesting_within(text: &str, max_depth: usize, max_nodes: usize) -> Result<(), String> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Block depth of the line a flow collection started on.
    let mut base = 0usize;
    let mut quote: Option<u8> = None;
    // Indentation of the line that opened a block scalar.
    let mut block_scalar: Option<usize> = None;
    // In a flow collection: the last significant byte (a quote starts a
    // quoted scalar only after one of `[{,:?`).
    let mut prev = b'[';
    let mut nodes = 0usize;
    let deep = |n: usize| {
        Err(format!(
            "invalid YAML: line {}: the document nests more than {max_depth} levels of mappings and sequences",
            n + 1
        ))
    };
    let many = |n: usize| {
        Err(format!(
            "invalid YAML: line {}: the document has more than {max_nodes} nodes (scalars, mappings and sequences)",
            n + 1
        ))
    };
    for (n, line) in text.split('\n').enumerate() {
        let l = line.as_bytes();
        let indent = l.iter().take_while(|&&c| c == b' ').count();
        let blank = l[indent..].iter().all(|c| c.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = 0;
        let mut value_start = false;
        if quote.is_none() && flow == 0 {
            if blank || l[indent] == b'#' {
                continue;
            }
            let marker = (l.starts_with(b"---") || l.starts_with(b"..."))
                && matches!(l.get(3), None | Some(b' ' | b'\t' | b'\r'));
            if marker {
                indents.clear();
                i = 3;
                base = 0;
            } else {
                while indents.last().is_some_and(|&t| t > indent) {
                    indents.pop();
                }
                if indents.last() != Some(&indent) {
                    indents.push(indent);
                }
                i = indent;
                base = indents.len();
            }
            nodes += 1;
            while let (Some(b'-' | b'?'), None | Some(b' ' | b'\t' | b'\r')) = (l.get(i), l.get(i + 1)) {
                base += 1;
                nodes += 1;
                i += 1;
                while l.get(i).is_some_and(|c| matches!(c, b' ' | b'\t')) {
                    i += 1;
                }
            }
            if base > max_depth {
                return deep(n);
            }
            value_start = true;
        }
        while i < l.len() {
            let c = l[i];
            if let Some(q) = quote {
                if q == b'"' && c == b'\\' {
                    i += 2;
                    continue;
                }
                if c == q {
                    quote = None;
                }
                i += 1;
                continue;
            }
            let after_space = i == 0 || matches!(l[i - 1], b' ' | b'\t');
            if c == b'#' && after_space {
                break;
            }
            if flow > 0 {
                match c {
                    b'"' | b'\'' if matches!(prev, b'[' | b'{' | b',' | b':' | b'?') => quote = Some(c),
                    b'[' | b'{' => {
                        flow += 1;
                        nodes += 1;
                        if base + flow > max_depth {
                            return deep(n);
                        }
                    }
                    b']' | b'}' => flow -= 1,
                    b',' | b':' => nodes += 1,
                    _ => {}
                }
                if nodes > max_nodes {
                    return many(n);
                }
                if !c.is_ascii_whitespace() {
                    prev = c;
                }
                i += 1;
                continue;
            }
            if value_start {
                match c {
                    b' ' | b'\t' | b'\r' => {
                        i += 1;
                        continue;
                    }
                    b'[' | b'{' => {
                        flow = 1;
                        nodes += 1;
                        prev = c;
                        if base + 1 > max_depth {
                            return deep(n);
                        }
                        value_start = false;
                        i += 1;
                        continue;
                    }
                    b'"' | b'\'' => {
                        quote = Some(c);
                        value_start = false;
                        i += 1;
                        continue;
                    }
                    b'|' | b'>' => {
                        block_scalar = Some(indent);
                        break;
                    }
                    b'&' | b'!' => {
                        while i < l.len() && !matches!(l[i], b' ' | b'\t') {
                            i += 1;
                        }
                        continue;
                    }
                    _ => value_start = false,
                }
            }
            if c == b':' && matches!(l.get(i + 1), None | Some(b' ' | b'\t' | b'\r')) {
                value_start = true;
                nodes += 1;
            }
            i += 1;
        }
        if nodes > max_nodes {
            return many(n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    const MANIFEST: &str = "\
apiVersion: steward.dev/v1alpha1
kind: Container
metadata:
  name: web
  labels: {app: web, 'it''s': \"a{b\"}
  annotations:
    note: |
      {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{
    other: plain {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{
spec:
  image: busybox # a comment {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{
  args:
  - sh
  - -c
  - \"echo [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"
  env: [{name: A, value: \"{[\"}, {name: B, value: 'x{'}]
";

    #[test]
    fn ordinary_manifests_pass_and_parse() {
        check_yaml_shape(MANIFEST).unwrap();
        let v = yaml_value_bounded(MANIFEST, 1 << 20).unwrap();
        assert_eq!(v["spec"]["env"][1]["value"], serde_yaml::Value::from("x{"));
        let json = r#"{"apiVersion":"steward.dev/v1alpha1","metadata":{"name":"a","labels":{"x":"{{{{["}},"spec":{"image":"i"}}"#;
        check_yaml_shape(json).unwrap();
    }

    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{}x{}", open.repeat(n), close.repeat(n))
    }

    /// The reviewer's bodies: each took seconds to minutes in libyaml.
    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        for text in [
            nested("{a: ", "}", 20_000),
            nested("[{a: ", "}]", 20_000),
            nested("{\"a\":", "}", 100_000),
            format!("spec:\n  x: {}", nested("[", "]", 50_000)),
            nested("- ", "", 20_000),
            // A plain scalar with a quote does not hide what follows.
            format!("{{a: it's, b: {}}}", nested("{a: ", "}", 5_000)),
        ] {
            let t = std::time::Instant::now();
            let e = yaml_value_bounded(&text, 3 << 20).unwrap_err();
            assert!(e.contains("nests more than 100 levels"), "{e}");
            assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
            let e = parse_manifests(&text);
            assert!(e[0].as_ref().unwrap_err().message.contains("nests more than"), "{e:?}");
        }
        // Block nesting by indentation.
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!("{}a{i}:\n", " ".repeat(i)));
        }
        assert!(check_yaml_shape(&text).unwrap_err().contains("nests more than"));
    }

    /// 1.5M one-letter items: refused by counting, before any value is built.
    #[test]
    fn many_tiny_nodes_are_refused_before_parsing() {
        let flow = format!("spec:\n  args: [{}]\n", vec!["a"; 1_500_000].join(","));
        let t = std::time::Instant::now();
        let e = yaml_value_bounded(&flow, 3 << 20).unwrap_err();
        assert!(e.contains("more than 100000 nodes"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
        let block = format!("spec:\n  args:\n{}", "  - a\n".repeat(200_000));
        assert!(check_yaml_shape(&block).unwrap_err().contains("nodes"));
        // The same count in a manifest file is fine.
        assert!(parse_manifests(&block).iter().all(|d| d.as_ref().map_or_else(|e| !e.message.contains("nodes"), |_| true)));
    }
}
