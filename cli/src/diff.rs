//! `steward diff -f PATH`: what an apply would change, as a unified diff
//! of each object's YAML (live object vs. the server's dry-run result).
//! Exit 0 no change, 1 changes, 2 error (as `kubectl diff` and `diff`).
//!
//! Comparing with the dry-run result rather than the manifest itself
//! means server defaults (restartPolicy, ...) never show up as changes.

use std::process::ExitCode;

use serde_json::{json, Map, Value};
use steward_schema::Container;

use crate::apply::{for_apply, status_lines};
use crate::client::{api_status, is_transport};
use crate::{emit, manifests, report, Context};

/// Lines of unchanged context around each change.
const CONTEXT: usize = 3;
/// Above this many cells the line diff stops looking for the smallest
/// edit and shows the differing middle as replaced; keeps a pathological
/// pair of huge objects from taking quadratic memory.
const MAX_CELLS: usize = 4_000_000;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Files, folders (recursive) or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1.., value_name = "PATH")]
    files: Vec<String>,
}

const EXIT_CHANGES: u8 = 1;
const EXIT_ERROR: u8 = 2;

pub async fn run(ctx: &Context, args: DiffArgs) -> ExitCode {
    match diff_all(ctx, &args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn diff_all(ctx: &Context, args: &DiffArgs) -> anyhow::Result<u8> {
    let docs = manifests::load(&args.files, ctx.namespace())?;
    let (mut changed, mut failed) = (false, false);
    for doc in docs {
        let location = doc.location();
        let obj = match doc.result {
            Ok(obj) => obj,
            Err(msg) => {
                eprintln!("error: {location}: {msg}");
                failed = true;
                continue;
            }
        };
        match diff_one(ctx, obj).await {
            Ok(text) if text.is_empty() => {}
            Ok(text) => {
                emit(&text)?;
                changed = true;
            }
            Err(e) if is_transport(&e) => return Err(e),
            Err(e) => {
                match api_status(&e) {
                    Some(s) => status_lines(s).iter().for_each(|l| eprintln!("error: {location}: {l}")),
                    None => eprintln!("error: {location}: {e:#}"),
                }
                failed = true;
            }
        }
    }
    Ok(if failed {
        EXIT_ERROR
    } else if changed {
        EXIT_CHANGES
    } else {
        0
    })
}

/// The diff for one object; empty when an apply would change nothing.
async fn diff_one(ctx: &Context, obj: Container) -> anyhow::Result<String> {
    let (ns, name) = (obj.metadata.namespace.clone(), obj.metadata.name.clone());
    let live = ctx.client.get(&ns, &name).await?;
    let merged = ctx.client.apply(&for_apply(obj), true, true).await?.object;
    let old = match &live {
        Some(c) => serde_yaml::to_string(&declared(c))?,
        None => String::new(),
    };
    let new = serde_yaml::to_string(&declared(&merged))?;
    Ok(unified_diff(&old, &new, &format!("live/{ns}/{name}"), &format!("merged/{ns}/{name}")))
}

/// The part of an object that apply writes: identity, labels,
/// annotations and spec. Status and server-set metadata change on their
/// own and would make every diff noisy.
fn declared(c: &Container) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), json!(c.metadata.name));
    meta.insert("namespace".into(), json!(c.metadata.namespace));
    if !c.metadata.labels.is_empty() {
        meta.insert("labels".into(), json!(c.metadata.labels));
    }
    if !c.metadata.annotations.is_empty() {
        meta.insert("annotations".into(), json!(c.metadata.annotations));
    }
    json!({
        "apiVersion": steward_schema::API_VERSION,
        "kind": steward_schema::KIND,
        "metadata": meta,
        "spec": c.spec,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Same,
    Del,
    Ins,
}

/// A line-level edit script turning `a` into `b`: common prefix and
/// suffix, and a longest-common-subsequence alignment of the middle.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops = vec![Op::Same; prefix];
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > MAX_CELLS {
        ops.extend(std::iter::repeat_n(Op::Del, n));
        ops.extend(std::iter::repeat_n(Op::Ins, m));
    } else {
        // lcs[i][j]: length of the LCS of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push(Op::Same);
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                // Deletions first on a tie: `-old` above `+new`, as diff prints.
                ops.push(Op::Del);
                i += 1;
            } else {
                ops.push(Op::Ins);
                j += 1;
            }
        }
    }
    ops.extend(std::iter::repeat_n(Op::Same, suffix));
    ops
}

/// `diff -u` output of two texts, or the empty string when they are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = edit_script(&a, &b);
    if ops.iter().all(|o| *o == Op::Same) {
        return String::new();
    }
    // Position in a and b before each op.
    let mut pos = Vec::with_capacity(ops.len() + 1);
    let (mut i, mut j) = (0usize, 0usize);
    for op in &ops {
        pos.push((i, j));
        match op {
            Op::Same => {
                i += 1;
                j += 1;
            }
            Op::Del => i += 1,
            Op::Ins => j += 1,
        }
    }
    pos.push((i, j));

    // Group changes into hunks: changes closer than 2*CONTEXT lines apart
    // share one hunk, like GNU diff.
    let changes: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| **o != Op::Same).map(|(k, _)| k).collect();
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changes {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + 1 + CONTEXT).min(ops.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }

    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (start, end) in hunks {
        let (a0, b0) = pos[start];
        let (a1, b1) = pos[end];
        let range = |from: usize, len: usize| {
            // An empty range names the line before it, as diff does.
            let first = if len == 0 { from } else { from + 1 };
            if len == 1 { format!("{first}") } else { format!("{first},{len}") }
        };
        out.push_str(&format!("@@ -{} +{} @@\n", range(a0, a1 - a0), range(b0, b1 - b0)));
        for k in start..end {
            let (ia, ib) = pos[k];
            match ops[k] {
                Op::Same => out.push_str(&format!(" {}\n", a[ia])),
                Op::Del => out.push_str(&format!("-{}\n", a[ia])),
                Op::Ins => out.push_str(&format!("+{}\n", b[ib])),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_give_nothing() {
        assert_eq!(unified_diff("a\nb\n", "a\nb\n", "x", "y"), "");
        assert_eq!(unified_diff("", "", "x", "y"), "");
    }

    #[test]
    fn one_changed_line_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\n5\nsix\n7\n8\n9\n10\n";
        assert_eq!(
            unified_diff(old, new, "live/default/a", "merged/default/a"),
            "--- live/default/a\n+++ merged/default/a\n@@ -3,7 +3,7 @@\n 3\n 4\n 5\n-6\n+six\n 7\n 8\n 9\n"
        );
    }

    #[test]
    fn new_object_is_all_additions() {
        assert_eq!(unified_diff("", "a\nb\n", "l", "m"), "--- l\n+++ m\n@@ -0,0 +1,2 @@\n+a\n+b\n");
    }

    #[test]
    fn distant_changes_make_separate_hunks_close_ones_merge() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let edit = |from: &[(i32, &str)]| -> String {
            (1..=20)
                .map(|i| from.iter().find(|(n, _)| *n == i).map_or(format!("{i}\n"), |(_, s)| format!("{s}\n")))
                .collect()
        };
        let new = edit(&[(2, "two"), (19, "nineteen")]);
        let d = unified_diff(&old, &new, "l", "m");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n"), "{d}");
        assert!(d.contains("@@ -16,5 +16,5 @@\n 16\n 17\n 18\n-19\n+nineteen\n 20\n"), "{d}");
        let new = edit(&[(5, "five"), (12, "twelve")]);
        let d = unified_diff(&old, &new, "l", "m");
        assert_eq!(d.matches("@@ -").count(), 1, "{d}");
    }

    #[test]
    fn insertions_and_deletions_align() {
        let d = unified_diff("a\nb\nc\n", "a\nx\nb\n", "l", "m");
        assert_eq!(d, "--- l\n+++ m\n@@ -1,3 +1,3 @@\n a\n+x\n b\n-c\n");
    }

    #[test]
    fn declared_part_skips_server_fields() {
        let mut c = Container::default();
        c.metadata.name = "a".into();
        c.metadata.namespace = "default".into();
        c.metadata.resource_version = "9".into();
        c.spec.image = "i".into();
        c.status = Some(Default::default());
        let v = declared(&c);
        assert_eq!(v["metadata"], json!({"name": "a", "namespace": "default"}));
        assert_eq!(v["spec"]["image"], "i");
        assert!(v.get("status").is_none());
    }
}
