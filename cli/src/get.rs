//! `steward get containers [NAME...] [-n NS | -A] [-l SEL] [-o FORMAT] [-w]`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use chrono::Utc;
use steward_schema::{Container, LabelSelector};

use crate::client::{ClientError, ContainerList, ListOptions, WatchEvent};
use crate::resource::{parse_targets, qualified};
use crate::table::{Columns, TableWriter};
use crate::{emit, Context};

/// How long one watch request may last before the server ends it and we
/// resume from the last revision seen; keeps dead connections from
/// hanging `get -w` for ever.
const WATCH_SPAN: Duration = Duration::from_secs(300);

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// `containers` (or `container`, `ct`) and optional names, or `container/NAME`.
    #[arg(required = true, value_name = "TYPE [NAME...]", add = clap_complete::engine::ArgValueCompleter::new(crate::completion::targets))]
    targets: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum)]
    output: Option<Format>,
    /// After printing, watch for changes and print each.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Keep `metadata.managedFields` in JSON and YAML output (left out by
    /// default, as kubectl does).
    #[arg(long)]
    show_managed_fields: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Wide,
    Json,
    Yaml,
    Name,
}

/// Prints objects in the chosen format, one at a time or as a whole.
struct Printer {
    format: Option<Format>,
    show_managed_fields: bool,
    columns: Columns,
    table: TableWriter,
    header_done: bool,
}

impl Printer {
    fn new(format: Option<Format>, all_namespaces: bool) -> Self {
        let columns = Columns { namespace: all_namespaces, wide: format == Some(Format::Wide) };
        Printer { format, show_managed_fields: false, columns, table: TableWriter::default(), header_done: false }
    }

    /// Formats objects as they arrive (`-w`): table rows, or one document
    /// per object.
    fn objects(&mut self, objects: &[Container]) -> anyhow::Result<String> {
        let stripped;
        let objects = if self.show_managed_fields {
            objects
        } else {
            stripped = objects.iter().cloned().map(without_managed_fields).collect::<Vec<_>>();
            &stripped[..]
        };
        let mut out = String::new();
        match self.format {
            None | Some(Format::Wide) => {
                let now = Utc::now();
                let mut rows = Vec::new();
                if !self.header_done && !objects.is_empty() {
                    rows.push(self.columns.header());
                    self.header_done = true;
                }
                rows.extend(objects.iter().map(|c| self.columns.row(c, now)));
                out = self.table.render(&rows);
            }
            Some(Format::Name) => {
                for c in objects {
                    out.push_str(&qualified(&c.metadata.name));
                    out.push('\n');
                }
            }
            Some(Format::Json) => {
                for c in objects {
                    out.push_str(&to_json(c)?);
                }
            }
            Some(Format::Yaml) => {
                for c in objects {
                    out.push_str("---\n");
                    out.push_str(&serde_yaml::to_string(c)?);
                }
            }
        }
        Ok(out)
    }

    /// Formats a complete answer: for json/yaml a `ContainerList`, or the
    /// object itself when exactly one name was asked for.
    fn answer(&mut self, mut list: ContainerList, single: bool) -> anyhow::Result<String> {
        if !self.show_managed_fields {
            list.items = list.items.into_iter().map(without_managed_fields).collect();
        }
        match self.format {
            Some(Format::Json) if single && list.items.len() == 1 => to_json(&list.items[0]),
            Some(Format::Yaml) if single && list.items.len() == 1 => Ok(serde_yaml::to_string(&list.items[0])?),
            Some(Format::Json) => to_json(&list),
            Some(Format::Yaml) => Ok(serde_yaml::to_string(&list)?),
            _ => self.objects(&list.items),
        }
    }
}

fn without_managed_fields(mut c: Container) -> Container {
    c.metadata.managed_fields = None;
    c
}

fn to_json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

pub async fn run(ctx: &Context, args: GetArgs) -> anyhow::Result<ExitCode> {
    let names = parse_targets(&args.targets)?;
    if args.all_namespaces && !names.is_empty() {
        bail!("a container cannot be retrieved by name across all namespaces");
    }
    if args.selector.is_some() && !names.is_empty() {
        bail!("names cannot be given together with a selector (-l)");
    }
    if let Some(sel) = &args.selector {
        // Caught here, the mistake is named before any request is made.
        LabelSelector::parse(sel)?;
    }
    let ns = if args.all_namespaces { None } else { Some(ctx.namespace()) };
    let mut printer = Printer::new(args.output, args.all_namespaces);
    printer.show_managed_fields = args.show_managed_fields;

    if args.watch {
        return watch(ctx, ns, &names, args.selector, &mut printer).await;
    }

    if names.is_empty() {
        let opts = ListOptions { label_selector: args.selector.clone(), field_selector: None };
        let list = ctx.client.list(ns, &opts).await?;
        if list.items.is_empty() && matches!(args.output, None | Some(Format::Wide)) {
            match ns {
                Some(ns) => eprintln!("No resources found in {ns} namespace."),
                None => eprintln!("No resources found"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        emit(&printer.answer(list, false)?)?;
        return Ok(ExitCode::SUCCESS);
    }

    // Named objects: print those found, report the others like kubectl,
    // and fail at the end.
    let ns = ctx.namespace();
    let mut found = Vec::new();
    let mut missing = false;
    for name in &names {
        match ctx.client.get(ns, name).await? {
            Some(c) => found.push(c),
            None => {
                eprintln!("Error from server (NotFound): containers.steward.dev {name:?} not found");
                missing = true;
            }
        }
    }
    if !found.is_empty() || names.len() > 1 {
        let single = names.len() == 1;
        emit(&printer.answer(ContainerList::new(String::new(), found), single)?)?;
    }
    Ok(if missing { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

type Key = (String, String);

fn key(c: &Container) -> Key {
    (c.metadata.namespace.clone(), c.metadata.name.clone())
}

/// `get -w`: the current state, then one line per change. A watch that
/// ends is resumed from the last revision seen; one that expired (410)
/// relists and prints only what differs from what was shown.
async fn watch(
    ctx: &Context,
    ns: Option<&str>,
    names: &[String],
    selector: Option<String>,
    printer: &mut Printer,
) -> anyhow::Result<ExitCode> {
    // One name is narrowed on the server; several are filtered here.
    let field_selector = match names {
        [one] => Some(format!("metadata.name={one}")),
        _ => None,
    };
    let opts = ListOptions { label_selector: selector, field_selector };
    let wanted = |c: &Container| names.is_empty() || names.contains(&c.metadata.name);

    let list = ctx.client.list(ns, &opts).await?;
    let mut seen: HashMap<Key, Container> = HashMap::new();
    let initial: Vec<Container> = list.items.into_iter().filter(|c| wanted(c)).collect();
    emit(&printer.objects(&initial)?)?;
    seen.extend(initial.into_iter().map(|c| (key(&c), c)));
    let mut rv = list.metadata.resource_version;

    loop {
        let mut stream = ctx.client.watch(ns, &opts, &rv, Some(WATCH_SPAN)).await?;
        while let Some(event) = stream.next().await? {
            match event {
                WatchEvent::Added(c) | WatchEvent::Modified(c) => {
                    rv = c.metadata.resource_version.clone();
                    let unchanged = seen
                        .get(&key(&c))
                        .is_some_and(|s| s.metadata.resource_version == c.metadata.resource_version);
                    if !wanted(&c) || unchanged {
                        continue;
                    }
                    emit(&printer.objects(std::slice::from_ref(&c))?)?;
                    seen.insert(key(&c), c);
                }
                WatchEvent::Deleted(c) => {
                    rv = c.metadata.resource_version.clone();
                    if !wanted(&c) {
                        continue;
                    }
                    emit(&printer.objects(std::slice::from_ref(&c))?)?;
                    seen.remove(&key(&c));
                }
                WatchEvent::Bookmark(r) => {
                    if !r.is_empty() {
                        rv = r;
                    }
                }
                WatchEvent::Error(s) if s.code == 410 => {
                    let list = ctx.client.list(ns, &opts).await?;
                    let (changed, now) = relist_changes(&seen, list.items.into_iter().filter(|c| wanted(c)).collect());
                    emit(&printer.objects(&changed)?)?;
                    seen = now;
                    rv = list.metadata.resource_version;
                    break;
                }
                WatchEvent::Error(s) => return Err(ClientError::Api(Box::new(s)).into()),
            }
        }
    }
}

/// After a relist: the objects to print (new or changed ones, and the last
/// known state of vanished ones, in name order) and the new seen set.
fn relist_changes(seen: &HashMap<Key, Container>, current: Vec<Container>) -> (Vec<Container>, HashMap<Key, Container>) {
    let now: HashMap<Key, Container> = current.into_iter().map(|c| (key(&c), c)).collect();
    let mut changed: Vec<Container> = now
        .values()
        .filter(|c| {
            seen.get(&key(c)).is_none_or(|s| s.metadata.resource_version != c.metadata.resource_version)
        })
        .cloned()
        .collect();
    changed.extend(seen.iter().filter(|(k, _)| !now.contains_key(*k)).map(|(_, c)| c.clone()));
    changed.sort_by_key(key);
    (changed, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str, rv: &str) -> Container {
        let mut c = Container::default();
        c.metadata.name = name.into();
        c.metadata.namespace = "default".into();
        c.metadata.resource_version = rv.into();
        c
    }

    #[test]
    fn relist_prints_only_differences() {
        let seen: HashMap<Key, Container> =
            [obj("a", "1"), obj("b", "2"), obj("gone", "3")].into_iter().map(|c| (key(&c), c)).collect();
        let (changed, now) = relist_changes(&seen, vec![obj("a", "1"), obj("b", "7"), obj("new", "8")]);
        let names: Vec<&str> = changed.iter().map(|c| c.metadata.name.as_str()).collect();
        assert_eq!(names, ["b", "gone", "new"]);
        assert_eq!(now.len(), 3);
    }

    #[test]
    fn json_of_one_name_is_the_object_else_a_list() {
        let mut p = Printer::new(Some(Format::Json), false);
        let one = p.answer(ContainerList::new("5".into(), vec![obj("a", "1")]), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["kind"], "Container");
        let many = p.answer(ContainerList::new("5".into(), vec![obj("a", "1"), obj("b", "2")]), false).unwrap();
        let v: serde_json::Value = serde_json::from_str(&many).unwrap();
        assert_eq!(v["kind"], "ContainerList");
        assert_eq!(v["apiVersion"], "steward.dev/v1alpha1");
        assert_eq!(v["metadata"]["resourceVersion"], "5");
        assert_eq!(v["items"][1]["kind"], "Container");
        assert_eq!(v["items"][1]["apiVersion"], "steward.dev/v1alpha1");
    }

    #[test]
    fn name_output_and_header_once() {
        let mut p = Printer::new(Some(Format::Name), false);
        assert_eq!(p.objects(&[obj("a", "1")]).unwrap(), "container.steward.dev/a\n");
        let mut p = Printer::new(None, false);
        let first = p.objects(&[obj("a", "1")]).unwrap();
        assert!(first.starts_with("NAME"));
        let second = p.objects(&[obj("b", "2")]).unwrap();
        assert!(second.starts_with("b "), "{second}");
    }
}
