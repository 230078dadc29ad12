//! `steward`: the API server and controllers (`steward serve`) and the
//! client verbs that talk to it over HTTP (`apply get describe delete wait
//! diff logs exec`).

mod apply;
mod client;
mod completion;
mod delete;
mod describe;
mod diff;
mod events;
mod exec;
mod follow;
mod get;
mod image;
mod live;
mod logs;
mod manifests;
mod network;
mod resource;
mod serve;
mod serve_exec;
mod table;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::{api_status, Client, DEFAULT_SERVER};

#[derive(Parser, Debug)]
#[command(name = "steward", version, about = "A declarative container reconciler")]
struct Cli {
    /// The kubeconfig to use (else $KUBECONFIG, else the kubeconfig of
    /// the default data dir, $STEWARD_DATA_DIR or /var/lib/steward).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// URL of the steward API server, instead of the kubeconfig's
    /// [default without a kubeconfig: https://127.0.0.1:7420].
    #[arg(long, global = true, env = "STEWARD_SERVER")]
    server: Option<String>,
    /// The API token, instead of the kubeconfig's.
    #[arg(long, global = true, env = "STEWARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token, instead of the kubeconfig's.
    #[arg(long, global = true, env = "STEWARD_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// A PEM file of the CA to trust for the server's certificate, instead
    /// of the kubeconfig's.
    #[arg(long, global = true)]
    certificate_authority: Option<std::path::PathBuf>,
    /// Do not check the server's certificate (anyone between you and the
    /// server can then read the token).
    #[arg(long, global = true)]
    insecure_skip_tls_verify: bool,
    /// Namespace of the objects (default: `default`; manifests may name their own).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run; boxing serve's many flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the API server and the controllers.
    Serve(serve::ServeArgs),
    /// Create or update objects from manifests.
    Apply(apply::ApplyArgs),
    /// List or watch containers.
    Get(get::GetArgs),
    /// Show one container in detail.
    Describe(describe::DescribeArgs),
    /// Delete containers.
    Delete(delete::DeleteArgs),
    /// Wait for a condition on a container, or for its deletion.
    Wait(wait::WaitArgs),
    /// Show what `apply` would change (exit 0: nothing, 1: changes, 2: error).
    Diff(diff::DiffArgs),
    /// Print a container's output.
    Logs(logs::LogsArgs),
    /// What happened to containers (pulls, starts, restarts, probe failures).
    Events(events::EventsArgs),
    /// Run a command in a running container.
    Exec(exec::ExecArgs),
    /// Manage images in the container runtime.
    Image(image::ImageArgs),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script: `source <(steward completion
    /// bash)`, or put `steward completion fish` in
    /// ~/.config/fish/completions/steward.fish.
    Completion {
        #[arg(value_enum)]
        shell: completion::Shell,
    },
    /// Print the kubeconfig `steward serve` wrote for its data dir (for
    /// kubectl, client libraries and this CLI on other machines).
    Kubeconfig {
        /// The server's data dir.
        #[arg(long, env = "STEWARD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
    },
    /// Maintain container networks without a server.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// containerd's shim runs this as the containers' log driver
    /// (`binary://` log URI); not for people.
    #[command(hide = true)]
    LogDriver {
        /// Log root, with optional `?max-size=BYTES&max-files=N`.
        arg: String,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// Tear down what is left of the network attachments of containers
    /// containerd no longer has (steward stopped; a running steward does
    /// this itself).
    Prune(network::PruneArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Parse and validate a configuration file without a server: prints
    /// its digest, or what is wrong and where (exit 1).
    Check {
        /// The file (YAML).
        path: std::path::PathBuf,
    },
}

/// What every client verb needs: the server and the namespace flag.
pub struct Context {
    pub client: Client,
    /// `-n`, when given; manifests that name a namespace keep theirs.
    pub namespace: Option<String>,
    /// The kubeconfig context's namespace, else `default`.
    pub default_namespace: String,
}

impl Context {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(&self.default_namespace)
    }
}

/// Marks a failed write to stdout (`steward get | head`): the reader is
/// gone, so there is no one to tell.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to stdout and flushes, so `get -w` lines appear as they happen.
/// Unlike `print!`, a closed pipe is an error to return, not a panic.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// Prints an error as one line: server errors as kubectl does
/// (`Error from server (NotFound): ...`), anything else as `error: ...`.
pub fn report(e: &anyhow::Error) {
    if e.downcast_ref::<StdoutClosed>().is_some() {
        return;
    }
    if api_status(e).is_some() && e.chain().count() == 1 {
        eprintln!("{e}");
    } else {
        eprintln!("error: {e:#}");
    }
}

async fn run(cli: Cli, config: Option<serve::LoadedConfig>) -> anyhow::Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        let config = config.ok_or_else(|| anyhow::anyhow!("serve: no configuration"))?;
        serve::run(args, config).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Config(ConfigCommand::Check { path }) = &cli.command {
        let c = steward_config::Config::load(path)?;
        serve::check_log_level(&c).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        emit(&format!("{}: valid, digest {}\n", path.display(), c.digest()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Network(NetworkCommand::Prune(args)) = cli.command {
        return network::prune(args).await;
    }
    if let Some(ns) = &cli.namespace {
        // It becomes part of every URL.
        steward_schema::validate::dns1123_label(ns).map_err(|m| anyhow::anyhow!("invalid namespace: {m}"))?;
    }
    if let Command::Completion { shell } = &cli.command {
        emit(&completion::script(*shell)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Kubeconfig { data_dir } = &cli.command {
        let path = data_dir.join("kubeconfig");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!("{}: {e}; `steward serve --data-dir {}` writes it when it starts", path.display(), data_dir.display())
        })?;
        emit(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = client_config(&cli)?;
    let default_namespace = config.namespace.clone().unwrap_or_else(|| "default".into());
    if cli.namespace.is_none() {
        steward_schema::validate::dns1123_label(&default_namespace)
            .map_err(|m| anyhow::anyhow!("the kubeconfig context's namespace: {m}"))?;
    }
    let ctx = Context { client: Client::new(&config)?, namespace: cli.namespace, default_namespace };
    match cli.command {
        Command::Serve(_) => Ok(ExitCode::SUCCESS),
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Get(args) => get::run(&ctx, args).await,
        Command::Describe(args) => describe::run(&ctx, args).await,
        Command::Delete(args) => delete::run(&ctx, args).await,
        Command::Wait(args) => wait::run(&ctx, args).await,
        // diff has its own exit codes, errors included (2).
        Command::Diff(args) => Ok(diff::run(&ctx, args).await),
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::Events(args) => events::run(&ctx, args).await,
        Command::Exec(args) => exec::run(&ctx, args).await,
        Command::Image(args) => image::run(&ctx, args).await,
        Command::Config(_) | Command::Network(_) | Command::Kubeconfig { .. } | Command::Completion { .. } | Command::LogDriver { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    // A shell asking for completions (the scripts of `steward completion`
    // call back with COMPLETE set): answer and exit.
    clap_complete::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command).var(completion::VAR).complete();
    let cli = Cli::parse();
    if let Command::LogDriver { arg } = &cli.command {
        // Plain blocking I/O in its own process: no async runtime needed.
        return match steward_controller::containerd::logdriver::run_log_driver(std::path::Path::new(arg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("steward log-driver: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // serve: the configuration first (it says how to log); a bad one
    // stops here, naming the key.
    let mut config = None;
    if let Command::Serve(args) = &cli.command {
        match serve::load_config(args) {
            Ok(c) => {
                init_logging(&c.config.log);
                config = Some(c);
            }
            Err(e) => {
                report(&e);
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, config)) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// A local `steward serve`'s data dir by default.
const DEFAULT_DATA_DIR: &str = "/var/lib/steward";

/// [`client_config`] from the environment alone (completion, where the
/// command line is still being typed).
pub fn client_config_from_env() -> anyhow::Result<steward_client::Config> {
    let cli = Cli::try_parse_from(["steward", "get", "containers"])?;
    client_config(&cli)
}

/// The server, token and CA to use: flags, then the kubeconfig
/// (`--kubeconfig`, `$KUBECONFIG`, the default data dir's), then
/// defaults. Without any kubeconfig, a server on this machine gets the
/// default data dir's token and CA when they are readable (root); they are
/// never sent to another machine unless asked for by name.
fn client_config(cli: &Cli) -> anyhow::Result<steward_client::Config> {
    let data_dir = std::env::var_os("STEWARD_DATA_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let overrides = steward_client::Overrides {
        kubeconfig: cli.kubeconfig.clone(),
        kubeconfig_env: std::env::var("KUBECONFIG").ok(),
        default_kubeconfig: Some(data_dir.join("kubeconfig")),
        context: cli.context.clone(),
        server: cli.server.clone(),
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
        certificate_authority: cli.certificate_authority.clone(),
        insecure_skip_tls_verify: cli.insecure_skip_tls_verify,
    };
    let (mut config, source) = overrides.resolve(DEFAULT_SERVER)?;
    if source == steward_client::kubeconfig::Source::None && is_local(&config.server) {
        if config.token.is_none() {
            config.token = steward_client::read_text(&data_dir.join("token")).ok().map(|t| t.trim().to_string());
        }
        if config.ca_pem.is_none() && config.server.starts_with("https://") {
            let ca = data_dir.join("pki/ca.crt");
            if let Ok(pem) = steward_client::read_file(&ca) {
                config.ca_pem = Some(pem);
                config.ca_source = ca.display().to_string();
            }
        }
    }
    Ok(config)
}

/// Whether a server URL names this machine (as URL parsers read it: a
/// `user@` part is not the host, and such a URL is never local).
fn is_local(server: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(server) else { return false };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Logs of `serve` go to stderr through `tracing`; `RUST_LOG` filters
/// (default `info`).
/// Logging as configured (`log.level`, `log.format`); `RUST_LOG`, when
/// set, overrides the level as a flag would.
fn init_logging(log: &steward_config::Log) {
    let quiet = "sqlx=warn,h2=warn,tower=warn";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::try_new(format!("{},{quiet}", log.level)).unwrap_or_else(|e| {
            eprintln!("warning: log.level {:?}: {e}; logging at info", log.level);
            tracing_subscriber::EnvFilter::new(format!("info,{quiet}"))
        })
    });
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match log.format {
        steward_config::LogFormat::Json => fmt.json().init(),
        steward_config::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_default_token_stays_on_this_machine() {
        // Only whether the default files would be consulted is tested here.
        assert!(is_local("https://127.0.0.1:7420"));
        assert!(is_local("http://localhost:1/"));
        assert!(is_local("https://[::1]:7420"));
        assert!(!is_local("https://otherhost:7420"));
        assert!(!is_local("https://localhost.evil.example:7420"), "a prefix is not the host");
        assert!(!is_local("https://127.0.0.1.evil.example"));
        assert!(!is_local("http://127.0.0.1:1@otherhost:7420"), "user info is not the host");
    }

    #[test]
    fn global_flags_after_the_verb() {
        let cli = Cli::try_parse_from(["steward", "get", "ct", "-n", "prod", "--server", "http://h:1"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("prod"));
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
        let cli = Cli::try_parse_from(["steward", "apply", "-f", "a.yaml", "b/", "--dry-run"]).unwrap();
        assert!(matches!(cli.command, Command::Apply(_)));
        assert!(Cli::try_parse_from(["steward", "apply", "-f", "a", "--prune"]).is_err());
        assert!(Cli::try_parse_from(["steward", "wait", "container/a", "--for=delete", "--timeout", "2m"]).is_ok());
        assert!(Cli::try_parse_from(["steward", "wait", "container/a", "--for=ready"]).is_err());
        assert!(Cli::try_parse_from(["steward", "delete", "ct", "a", "-f", "x"]).is_err());
    }
}
