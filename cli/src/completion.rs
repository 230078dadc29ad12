//! Shell completion: `steward completion bash|zsh|fish` prints a script
//! that asks steward itself for completions as you type (clap's dynamic
//! completion), so flags, kinds and the names of live Containers (asked
//! of the server the kubeconfig names, within a second) complete.

use std::ffi::OsStr;
use std::time::Duration;

use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter;

/// The environment variable the generated scripts call steward back with.
pub const VAR: &str = "COMPLETE";

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The script to `source` (bash, zsh) or save (fish).
pub fn script(shell: Shell) -> anyhow::Result<String> {
    let bin = std::env::current_exe().ok().and_then(|p| p.to_str().map(String::from)).unwrap_or_else(|| "steward".into());
    let mut out = Vec::new();
    let completer: &dyn EnvCompleter = match shell {
        Shell::Bash => &clap_complete::env::Bash,
        Shell::Zsh => &clap_complete::env::Zsh,
        Shell::Fish => &clap_complete::env::Fish,
    };
    completer.write_registration(VAR, "steward", &bin, &bin, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Kinds, then `container/NAME`s and names of live Containers, matching
/// what is typed so far.
pub fn targets(current: &OsStr) -> Vec<CompletionCandidate> {
    let typed = current.to_string_lossy();
    let mut out: Vec<CompletionCandidate> = ["containers", "container/"]
        .into_iter()
        .filter(|k| k.starts_with(typed.as_ref()))
        .map(CompletionCandidate::new)
        .collect();
    for name in live_names() {
        let qualified = format!("container/{name}");
        if qualified.starts_with(typed.as_ref()) && typed.starts_with("container/") {
            out.push(CompletionCandidate::new(qualified));
        } else if name.starts_with(typed.as_ref()) {
            out.push(CompletionCandidate::new(name));
        }
    }
    out
}

/// The names of the Containers of the kubeconfig's namespace, or none
/// when the server does not answer within a second.
fn live_names() -> Vec<String> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return Vec::new() };
    rt.block_on(async {
        let Ok(config) = crate::client_config_from_env() else { return Vec::new() };
        let ns = config.namespace.clone().unwrap_or_else(|| "default".into());
        let Ok(client) = crate::client::Client::new(&config) else { return Vec::new() };
        let list = tokio::time::timeout(Duration::from_secs(1), client.list(Some(&ns), &Default::default())).await;
        match list {
            Ok(Ok(l)) => l.items.into_iter().map(|c| c.metadata.name).collect(),
            _ => Vec::new(),
        }
    })
}
