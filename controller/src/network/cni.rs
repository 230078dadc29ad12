//! The CNI side: running the standard plugins as the CNI spec says (ADD,
//! DEL; `CNI_*` environment, the network configuration on stdin, a
//! result or an error on stdout), a network configuration list the way
//! libcni runs one (each plugin gets the previous one's result; DEL in
//! reverse order), and the pieces of a result steward reads.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CNI version steward speaks (Debian bookworm's plugins, 1.1.1, do).
pub const CNI_VERSION: &str = "1.0.0";
/// The interface name of a container's attachment.
pub const IF_NAME: &str = "eth0";
/// A plugin that has not answered in this long is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Plugin output beyond this is cut (a result is a few KB).
const MAX_OUTPUT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin} not found in {dir}: install containernetworking-plugins (apt-get install containernetworking-plugins)")]
    Missing { plugin: String, dir: String },
    #[error("CNI plugin {plugin} ({command}): {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} ({command}): {err}")]
    Io {
        plugin: String,
        command: &'static str,
        err: std::io::Error,
    },
}

/// What a plugin is run on.
#[derive(Clone, Debug)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    /// The namespace path, or empty (DEL of a namespace that is gone).
    pub netns: &'a str,
    pub if_name: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
        }
    }
}

/// Runs the plugins of CNI binaries in `dir`.
#[derive(Clone, Debug)]
pub struct Plugins {
    pub dir: PathBuf,
}

impl Plugins {
    /// Fails naming the package when one of `types` is not installed.
    pub fn require(&self, types: &[&str]) -> Result<(), CniError> {
        for t in types {
            if !self.dir.join(t).is_file() {
                return Err(CniError::Missing {
                    plugin: (*t).into(),
                    dir: self.dir.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Runs one plugin; `Ok(Some(result))` for an ADD, `Ok(None)` for the
    /// others.
    pub async fn exec(
        &self,
        command: Command,
        conf: &Value,
        inv: &Invocation<'_>,
    ) -> Result<Option<Value>, CniError> {
        let plugin = conf
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let cmd = command.as_str();
        let path = self.dir.join(&plugin);
        if plugin.is_empty() || plugin.contains('/') || !path.is_file() {
            return Err(CniError::Missing {
                plugin,
                dir: self.dir.display().to_string(),
            });
        }
        let io_err = |err| CniError::Io {
            plugin: plugin.clone(),
            command: cmd,
            err,
        };
        let stdin = serde_json::to_vec(conf).map_err(|e| io_err(std::io::Error::other(e)))?;
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            // Plugins run iptables and friends.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.if_name)
            .env("CNI_PATH", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err)?;
        let run = async {
            if let Some(mut w) = child.stdin.take() {
                w.write_all(&stdin).await?;
            }
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (o, e) = (child.stdout.take(), child.stderr.take());
            let read_out = async {
                if let Some(o) = o {
                    o.take(MAX_OUTPUT).read_to_end(&mut out).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let read_err = async {
                if let Some(e) = e {
                    e.take(MAX_OUTPUT).read_to_end(&mut err).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::try_join!(read_out, read_err)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out, err))
        };
        let (status, out, err) = match tokio::time::timeout(PLUGIN_TIMEOUT, run).await {
            Ok(r) => r.map_err(io_err)?,
            Err(_) => {
                return Err(CniError::Plugin {
                    plugin,
                    command: cmd,
                    message: format!("no answer in {}s; killed", PLUGIN_TIMEOUT.as_secs()),
                })
            }
        };
        if !status.success() {
            return Err(CniError::Plugin {
                plugin,
                command: cmd,
                message: error_message(&out, &err),
            });
        }
        if command != Command::Add {
            return Ok(None);
        }
        let result: Value = serde_json::from_slice(&out).map_err(|e| CniError::Plugin {
            plugin: plugin.clone(),
            command: cmd,
            message: format!(
                "unreadable result ({e}): {}",
                String::from_utf8_lossy(&out)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        })?;
        Ok(Some(result))
    }

    /// ADD of every plugin of `list` in order, each given the previous
    /// result; the last result. On a failure the plugins already added are
    /// deleted again (best effort) and the error returned.
    pub async fn add_list(
        &self,
        list: &Value,
        runtime_config: &Value,
        inv: &Invocation<'_>,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for conf in plugin_confs(list, runtime_config) {
            match self
                .exec(Command::Add, &with_prev(conf, prev.as_ref()), inv)
                .await
            {
                Ok(r) => prev = r,
                Err(e) => {
                    if let Err(d) = self
                        .del_list(list, runtime_config, prev.as_ref(), inv)
                        .await
                    {
                        tracing::warn!(container = inv.container_id, error = %d, "undoing a failed CNI ADD");
                    }
                    return Err(e);
                }
            }
        }
        Ok(prev.unwrap_or_else(|| json!({"cniVersion": CNI_VERSION})))
    }

    /// DEL of every plugin of `list` in reverse order, with the cached
    /// result when there is one. Idempotent, as the spec wants DEL to be.
    pub async fn del_list(
        &self,
        list: &Value,
        runtime_config: &Value,
        result: Option<&Value>,
        inv: &Invocation<'_>,
    ) -> Result<(), CniError> {
        let mut confs = plugin_confs(list, runtime_config);
        confs.reverse();
        for conf in confs {
            self.exec(Command::Del, &with_prev(conf, result), inv)
                .await?;
        }
        Ok(())
    }
}

/// The configuration each plugin of a list is given: the plugin's own
/// object plus the list's `name` and `cniVersion`, and `runtimeConfig`
/// with the capabilities the plugin declares (libcni's injection).
fn plugin_confs(list: &Value, runtime_config: &Value) -> Vec<Value> {
    let name = list.get("name").cloned().unwrap_or(Value::Null);
    let version = list
        .get("cniVersion")
        .cloned()
        .unwrap_or_else(|| json!(CNI_VERSION));
    let plugins = list
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    plugins
        .into_iter()
        .map(|mut p| {
            if let Some(o) = p.as_object_mut() {
                o.insert("name".into(), name.clone());
                o.insert("cniVersion".into(), version.clone());
                let caps = o
                    .get("capabilities")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let mut rc = serde_json::Map::new();
                for (cap, on) in caps {
                    if on.as_bool() == Some(true) {
                        if let Some(v) = runtime_config.get(&cap) {
                            rc.insert(cap, v.clone());
                        }
                    }
                }
                if !rc.is_empty() {
                    o.insert("runtimeConfig".into(), Value::Object(rc));
                }
            }
            p
        })
        .collect()
}

fn with_prev(mut conf: Value, prev: Option<&Value>) -> Value {
    if let (Some(o), Some(p)) = (conf.as_object_mut(), prev) {
        o.insert("prevResult".into(), p.clone());
    }
    conf
}

/// A CNI error's message (`{"code":..,"msg":..,"details":..}` on stdout),
/// else whatever the plugin printed.
fn error_message(out: &[u8], err: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(out) {
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        if !msg.is_empty() {
            return if details.is_empty() {
                msg.to_string()
            } else {
                format!("{msg}: {details}")
            };
        }
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(out).trim(),
        String::from_utf8_lossy(err).trim()
    );
    let text: String = text.chars().take(500).collect();
    if text.is_empty() {
        "failed without a message".into()
    } else {
        text
    }
}

/// The first IPv4 address of the container's interface in `result`
/// (without its prefix length), and the gateway.
pub fn container_ipv4(result: &Value) -> Option<(std::net::Ipv4Addr, Option<std::net::Ipv4Addr>)> {
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    for ip in result.get("ips").and_then(Value::as_array)? {
        // An address of an interface inside the sandbox (eth0), not the
        // bridge's or the veth's host end.
        let in_sandbox = match (ip.get("interface").and_then(Value::as_u64), ifaces) {
            (Some(i), Some(ifs)) => ifs
                .get(i as usize)
                .and_then(|f| f.get("sandbox"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            _ => true,
        };
        if !in_sandbox {
            continue;
        }
        let addr = ip.get("address").and_then(Value::as_str)?;
        let a: std::net::Ipv4Addr = match addr.split('/').next().and_then(|a| a.parse().ok()) {
            Some(a) => a,
            None => continue,
        };
        let gw = ip
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        return Some((a, gw));
    }
    None
}

/// The plugin directory Debian installs to, unless `CNI_PATH`-like
/// configuration says otherwise.
pub fn default_plugin_dir() -> &'static Path {
    Path::new("/usr/lib/cni")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_confs_get_name_version_and_their_capabilities_only() {
        let list = json!({"cniVersion": "1.0.0", "name": "bridge", "plugins": [
            {"type": "bridge", "bridge": "steward0"},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]});
        let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "other": 1});
        let confs = plugin_confs(&list, &rc);
        assert_eq!(
            confs[0],
            json!({"type": "bridge", "bridge": "steward0", "name": "bridge", "cniVersion": "1.0.0"})
        );
        assert_eq!(
            confs[1]["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert_eq!(confs[1]["name"], "bridge");
        let with = with_prev(confs[1].clone(), Some(&json!({"ips": []})));
        assert_eq!(with["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn the_container_address_is_the_sandbox_interfaces() {
        let r = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "steward0", "mac": "x"}, {"name": "veth1", "mac": "y"}, {"name": "eth0", "mac": "z", "sandbox": "/run/x"}],
            "ips": [{"address": "10.88.0.7/16", "gateway": "10.88.0.1", "interface": 2}]});
        assert_eq!(
            container_ipv4(&r),
            Some((
                "10.88.0.7".parse().unwrap(),
                Some("10.88.0.1".parse().unwrap())
            ))
        );
        let host_only = json!({"interfaces": [{"name": "br"}], "ips": [{"address": "10.0.0.1/24", "interface": 0}]});
        assert_eq!(container_ipv4(&host_only), None);
    }

    #[test]
    fn plugin_errors_are_read_from_the_cni_error_object() {
        assert_eq!(
            error_message(
                br#"{"code":7,"msg":"failed to allocate","details":"range full"}"#,
                b""
            ),
            "failed to allocate: range full"
        );
        assert_eq!(error_message(b"", b"panic: boom\n"), "panic: boom");
        assert_eq!(error_message(b"", b""), "failed without a message");
    }
}
