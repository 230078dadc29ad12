//! Reading manifests for `apply`, `diff` and `delete -f`: files, folders
//! (recursive, sorted, `*.yaml *.yml *.json`) and `-` for stdin, each
//! holding one or more documents.
//!
//! Problems are kept per document instead of failing the whole run, so the
//! verbs can act on every good document and name each bad one.

use std::path::{Path, PathBuf};

use steward_schema::{parse_manifests, Container};

/// Extensions picked up when walking a folder. Files named explicitly are
/// read whatever their name.
const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// One document of one input, parsed or not.
#[derive(Debug)]
pub struct Manifest {
    /// The path as the user will recognise it, `<stdin>` for `-`.
    pub file: String,
    /// 1-based position of the document in its file; `None` when the file
    /// itself could not be read.
    pub document: Option<usize>,
    pub result: Result<Container, String>,
}

impl Manifest {
    /// `FILE: document N`, the prefix of every message about this document.
    pub fn location(&self) -> String {
        match self.document {
            Some(n) => format!("{}: document {n}", self.file),
            None => self.file.clone(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

/// Expands the `-f` arguments into the inputs to read, in order: folders
/// become their manifest files, recursively, sorted by path.
pub fn expand(paths: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    let mut stdin_seen = false;
    for p in paths {
        if p == "-" {
            // stdin can be read once; a second `-` would silently be empty.
            if !stdin_seen {
                out.push(Input::Stdin);
                stdin_seen = true;
            }
            continue;
        }
        let path = Path::new(p);
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("the path {p:?} does not exist"),
            _ => anyhow::anyhow!("cannot read {p:?}: {e}"),
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files)?;
            files.sort();
            out.extend(files.into_iter().map(Input::File));
        } else {
            out.push(Input::File(path.to_path_buf()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| anyhow::anyhow!("cannot stat {}: {e}", path.display()))?;
        // Symlinked folders are not followed (a link to a parent would loop
        // for ever); symlinked files are read like files.
        if file_type.is_dir() {
            walk(&path, out)?;
        } else if has_manifest_extension(&path) && (file_type.is_file() || path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

fn has_manifest_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Reads and parses every input. `default_namespace` fills in objects that
/// name none. Names and namespaces are checked here because they become
/// parts of a URL.
pub fn load(paths: &[String], default_namespace: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for input in expand(paths)? {
        let (file, text) = match input {
            Input::Stdin => ("<stdin>".to_string(), std::io::read_to_string(std::io::stdin())),
            Input::File(p) => (p.display().to_string(), std::fs::read_to_string(&p)),
        };
        match text {
            Ok(text) => out.extend(parse_text(&file, &text, default_namespace)),
            Err(e) => out.push(Manifest { file, document: None, result: Err(format!("cannot read: {e}")) }),
        }
    }
    Ok(out)
}

/// Parses one file's text into its documents.
pub fn parse_text(file: &str, text: &str, default_namespace: &str) -> Vec<Manifest> {
    parse_manifests(text)
        .into_iter()
        .map(|doc| match doc {
            Ok(doc) => Manifest {
                file: file.to_string(),
                document: Some(doc.index + 1),
                result: check_identity(doc.object, default_namespace),
            },
            Err(e) => Manifest { file: file.to_string(), document: Some(e.index + 1), result: Err(e.message) },
        })
        .collect()
}

fn check_identity(mut c: Container, default_namespace: &str) -> Result<Container, String> {
    if !c.kind.is_empty() && c.kind != steward_schema::KIND {
        return Err(format!("kind: steward serves only Container, not {:?}", c.kind));
    }
    if c.metadata.name.is_empty() {
        return Err("metadata.name: Required value".into());
    }
    steward_schema::validate::dns1123_label(&c.metadata.name).map_err(|m| format!("metadata.name: {m}"))?;
    if c.metadata.namespace.is_empty() {
        c.metadata.namespace = default_namespace.to_string();
    }
    steward_schema::validate::dns1123_label(&c.metadata.namespace)
        .map_err(|m| format!("metadata.namespace: {m}"))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, "").unwrap();
    }

    #[test]
    fn folders_are_walked_recursively_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["b.yaml", "a.yml", "c.json", "notes.txt", "sub/z.yaml", "sub/deeper/a.YAML", "a0/x.json"] {
            touch(&d.join(f));
        }
        let explicit = d.join("notes.txt");
        let inputs = expand(&[
            d.display().to_string(),
            "-".into(),
            explicit.display().to_string(),
            "-".into(),
        ])
        .unwrap();
        let names: Vec<String> = inputs
            .iter()
            .map(|i| match i {
                Input::Stdin => "-".into(),
                Input::File(p) => p.strip_prefix(d).unwrap_or(p).display().to_string(),
            })
            .collect();
        assert_eq!(
            names,
            ["a.yml", "a0/x.json", "b.yaml", "c.json", "sub/deeper/a.YAML", "sub/z.yaml", "-", "notes.txt"]
        );
    }

    #[test]
    fn missing_path_is_an_error() {
        let e = expand(&["/definitely/not/here".into()]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn documents_are_numbered_from_one_and_checked() {
        let text = "\
metadata: {name: a}
spec: {image: i}
---
metadata: {name: Bad_Name}
spec: {image: i}
---
metadata: {name: c, namespace: prod}
spec: {image: i, bogus: 1}
---
kind: Pod
metadata: {name: d}
---
metadata: {namespace: prod}
";
        let docs = parse_text("f.yaml", text, "dev");
        assert_eq!(docs.len(), 5);
        let a = docs[0].result.as_ref().unwrap();
        assert_eq!((a.metadata.name.as_str(), a.metadata.namespace.as_str()), ("a", "dev"));
        assert_eq!(docs[0].location(), "f.yaml: document 1");
        assert!(docs[1].result.as_ref().unwrap_err().starts_with("metadata.name: "));
        assert_eq!(docs[2].document, Some(3));
        assert!(docs[2].result.as_ref().unwrap_err().starts_with("spec.bogus: unknown field"));
        assert!(docs[3].result.as_ref().unwrap_err().starts_with("kind: "));
        assert_eq!(docs[4].result.as_ref().unwrap_err(), "metadata.name: Required value");
    }
}
