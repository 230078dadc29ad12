//! Naming of the one resource type, as users type it on the command line
//! (`containers web`, `ct web`, `container/web`) and as the verbs print it
//! (`container.steward.dev/web`).

use anyhow::bail;

const TYPE_NAMES: &[&str] = &["container", "containers", "ct", "container.steward.dev", "containers.steward.dev"];

pub fn is_container_type(s: &str) -> bool {
    TYPE_NAMES.iter().any(|t| t.eq_ignore_ascii_case(s))
}

/// `container.steward.dev/NAME`, the form every verb prints.
pub fn qualified(name: &str) -> String {
    format!("container.steward.dev/{name}")
}

/// Parses `TYPE [NAME...]` or `TYPE/NAME...` into the names (empty when
/// only the type was given). Names are checked because they go into URLs.
pub fn parse_targets(args: &[String]) -> anyhow::Result<Vec<String>> {
    let Some(first) = args.first() else {
        bail!("you must specify the type of resource: container");
    };
    let names: Vec<String> = if first.contains('/') {
        let mut names = Vec::new();
        for arg in args {
            match arg.split_once('/') {
                Some((t, n)) if is_container_type(t) => names.push(n.to_string()),
                Some((t, _)) => bail!("the server doesn't have a resource type {t:?}"),
                None => bail!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form"),
            }
        }
        names
    } else if is_container_type(first) {
        let names = args[1..].to_vec();
        if let Some(n) = names.iter().find(|n| n.contains('/')) {
            bail!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (got {n:?})");
        }
        names
    } else {
        bail!("the server doesn't have a resource type {first:?}");
    };
    for n in &names {
        steward_schema::validate::dns1123_label(n).map_err(|m| anyhow::anyhow!("invalid name: {m}"))?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn target_forms() {
        assert_eq!(parse_targets(&args(&["containers"])).unwrap(), Vec::<String>::new());
        assert_eq!(parse_targets(&args(&["ct", "a", "b"])).unwrap(), ["a", "b"]);
        assert_eq!(parse_targets(&args(&["container/a", "ct/b"])).unwrap(), ["a", "b"]);
        assert_eq!(parse_targets(&args(&["Containers.steward.dev", "a"])).unwrap(), ["a"]);
        assert!(parse_targets(&args(&[])).is_err());
        assert!(parse_targets(&args(&["pods"])).is_err());
        assert!(parse_targets(&args(&["pod/a"])).is_err());
        assert!(parse_targets(&args(&["container/a", "b"])).is_err());
        assert!(parse_targets(&args(&["ct", "../etc"])).is_err());
    }
}
