//! kubeconfig files, read as kubectl reads them and written by `steward
//! serve` (`DATA/kubeconfig`), so one file serves kubectl, client
//! libraries and the steward CLI.
//!
//! Only what a steward server needs is understood: a cluster's `server`,
//! `certificate-authority[-data]` and `insecure-skip-tls-verify`; a user's
//! `token` and `tokenFile`; a context's `namespace`. Other keys are
//! ignored, as kubectl ignores keys it does not know. A user that
//! authenticates only by client certificate or exec plugin is refused by
//! name, since steward takes bearer tokens.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{Config, Error};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub clusters: Vec<NamedCluster>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub users: Vec<NamedUser>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    pub current_context: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    #[serde(default)]
    pub cluster: Cluster,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(default)]
    pub server: String,
    #[serde(rename = "certificate-authority", default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    #[serde(rename = "certificate-authority-data", default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    #[serde(default)]
    pub user: User,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(rename = "tokenFile", default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Other ways of authenticating, to refuse them by name.
    #[serde(rename = "client-certificate-data", default, skip_serializing)]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-certificate", default, skip_serializing)]
    client_certificate: Option<String>,
    #[serde(default, skip_serializing)]
    exec: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    #[serde(default)]
    pub context: Context,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Context {
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The name of the cluster, user and context `steward serve` writes.
pub const NAME: &str = "steward";

impl Kubeconfig {
    /// The kubeconfig of one server: cluster, user and context all named
    /// `steward`, current.
    pub fn single(server: &str, ca_pem: Option<&[u8]>, token: Option<&str>) -> Kubeconfig {
        let b64 = base64::engine::general_purpose::STANDARD;
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: NAME.into(),
                cluster: Cluster {
                    server: server.into(),
                    certificate_authority_data: ca_pem.map(|p| b64.encode(p)),
                    ..Default::default()
                },
            }],
            users: vec![NamedUser { name: NAME.into(), user: User { token: token.map(String::from), ..Default::default() } }],
            contexts: vec![NamedContext {
                name: NAME.into(),
                context: Context { cluster: NAME.into(), user: NAME.into(), namespace: Some("default".into()) },
            }],
            current_context: NAME.into(),
        }
    }

    /// The file's text (YAML, as kubectl writes it).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Reads one file. Relative `certificate-authority` and `tokenFile`
    /// paths are taken relative to the file's directory, as kubectl does.
    pub fn load(path: &Path) -> Result<Kubeconfig, Error> {
        let text = crate::read_text(path).map_err(|e| Error::Config(format!("kubeconfig {}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Kubeconfig, Error> {
        if text.trim().is_empty() {
            return Ok(Kubeconfig::default());
        }
        let mut k: Kubeconfig =
            serde_yaml::from_str(text).map_err(|e| Error::Config(format!("kubeconfig {}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let absolute = |p: &mut Option<String>| {
            if let Some(s) = p.as_mut().filter(|s| !s.is_empty() && Path::new(s.as_str()).is_relative()) {
                *s = dir.join(&*s).to_string_lossy().into_owned();
            }
        };
        for c in &mut k.clusters {
            absolute(&mut c.cluster.certificate_authority);
        }
        for u in &mut k.users {
            absolute(&mut u.user.token_file);
        }
        Ok(k)
    }

    /// `other` merged in kubectl's way: the first file to define a name
    /// (or the current context) wins.
    fn merge(&mut self, other: Kubeconfig) {
        for c in other.clusters {
            if !self.clusters.iter().any(|x| x.name == c.name) {
                self.clusters.push(c);
            }
        }
        for u in other.users {
            if !self.users.iter().any(|x| x.name == u.name) {
                self.users.push(u);
            }
        }
        for c in other.contexts {
            if !self.contexts.iter().any(|x| x.name == c.name) {
                self.contexts.push(c);
            }
        }
        if self.current_context.is_empty() {
            self.current_context = other.current_context;
        }
    }
}

/// What flags and the environment say, before any kubeconfig.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--kubeconfig`: this file only; it must exist.
    pub kubeconfig: Option<PathBuf>,
    /// `$KUBECONFIG`: files separated by `:`; missing ones are skipped.
    pub kubeconfig_env: Option<String>,
    /// Used when neither of the above names a file, if it exists (the
    /// default data dir's `kubeconfig`).
    pub default_kubeconfig: Option<PathBuf>,
    /// `--context`: instead of the current context.
    pub context: Option<String>,
    /// `--server`: instead of the cluster's server (its CA still applies).
    pub server: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--certificate-authority`: a PEM file to trust instead of the
    /// kubeconfig's CA.
    pub certificate_authority: Option<PathBuf>,
    /// `--insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: bool,
}

/// Where the configuration came from, for messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Source {
    /// No kubeconfig was found; flags and defaults only.
    #[default]
    None,
    /// These kubeconfig files (merged).
    Files(Vec<PathBuf>),
}

impl Overrides {
    /// The kubeconfig files to read, in order.
    fn files(&self) -> Result<Vec<PathBuf>, Error> {
        if let Some(p) = &self.kubeconfig {
            if !p.exists() {
                return Err(Error::Config(format!("--kubeconfig {}: no such file", p.display())));
            }
            return Ok(vec![p.clone()]);
        }
        if let Some(list) = self.kubeconfig_env.as_deref().filter(|s| !s.is_empty()) {
            return Ok(list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).filter(|p| p.exists()).collect());
        }
        Ok(self.default_kubeconfig.iter().filter(|p| p.exists()).cloned().collect())
    }

    /// The configuration these overrides and the kubeconfig they lead to
    /// give; `default_server` when nothing names a server.
    pub fn resolve(&self, default_server: &str) -> Result<(Config, Source), Error> {
        let files = self.files()?;
        let mut merged = Kubeconfig::default();
        for f in &files {
            merged.merge(Kubeconfig::load(f)?);
        }
        let source = if files.is_empty() { Source::None } else { Source::Files(files.clone()) };
        let what = || files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
        let mut config = Config::default();
        let context_name = self.context.clone().unwrap_or_else(|| merged.current_context.clone());
        if !context_name.is_empty() {
            let context = merged
                .contexts
                .iter()
                .find(|c| c.name == context_name)
                .map(|c| c.context.clone())
                .ok_or_else(|| Error::Config(format!("kubeconfig {}: no context {context_name:?}", what())))?;
            let cluster = merged.clusters.iter().find(|c| c.name == context.cluster).map(|c| c.cluster.clone()).ok_or_else(|| {
                Error::Config(format!("kubeconfig {}: context {context_name:?} names cluster {:?}, which is not there", what(), context.cluster))
            })?;
            config.server = cluster.server.clone();
            config.insecure_skip_tls_verify = cluster.insecure_skip_tls_verify;
            if let Some(data) = cluster.certificate_authority_data.as_deref().filter(|s| !s.is_empty()) {
                let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| {
                    Error::Config(format!("kubeconfig {}: clusters[{}].cluster.certificate-authority-data: not base64: {e}", what(), context.cluster))
                })?;
                config.ca_pem = Some(pem);
                config.ca_source = format!("certificate-authority-data of cluster {:?} in {}", context.cluster, what());
            } else if let Some(file) = cluster.certificate_authority.as_deref().filter(|s| !s.is_empty()) {
                config.ca_pem = Some(crate::read_file(Path::new(file)).map_err(|e| {
                    Error::Config(format!("kubeconfig {}: certificate-authority {file}: {e}", what()))
                })?);
                config.ca_source = file.to_string();
            }
            if !context.user.is_empty() {
                let user = merged.users.iter().find(|u| u.name == context.user).map(|u| u.user.clone()).ok_or_else(|| {
                    Error::Config(format!("kubeconfig {}: context {context_name:?} names user {:?}, which is not there", what(), context.user))
                })?;
                config.token = match (&user.token, &user.token_file) {
                    (Some(t), _) if !t.is_empty() => Some(t.trim().to_string()),
                    (_, Some(f)) if !f.is_empty() => Some(read_token(Path::new(f), &format!("kubeconfig {}: tokenFile", what()))?),
                    _ if user.client_certificate_data.is_some() || user.client_certificate.is_some() || user.exec.is_some() => {
                        return Err(Error::Config(format!(
                            "kubeconfig {}: user {:?} authenticates by client certificate or exec plugin; steward takes bearer tokens (token or tokenFile)",
                            what(),
                            context.user
                        )))
                    }
                    _ => None,
                };
            }
            config.namespace = context.namespace.filter(|n| !n.is_empty());
        }
        if let Some(s) = &self.server {
            config.server = s.clone();
        }
        if config.server.is_empty() {
            config.server = default_server.to_string();
        }
        if let Some(t) = &self.token {
            config.token = Some(t.trim().to_string());
        } else if let Some(f) = &self.token_file {
            config.token = Some(read_token(f, "--token-file")?);
        }
        if let Some(f) = &self.certificate_authority {
            config.ca_pem = Some(crate::read_file(f).map_err(|e| Error::Config(format!("--certificate-authority {}: {e}", f.display())))?);
            config.ca_source = format!("--certificate-authority {}", f.display());
        }
        if self.insecure_skip_tls_verify {
            config.insecure_skip_tls_verify = true;
        }
        Ok((config, source))
    }
}

fn read_token(path: &Path, what: &str) -> Result<String, Error> {
    let t = crate::read_text(path).map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    Ok(t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_written_kubeconfig_reads_back_as_its_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kubeconfig::single("https://127.0.0.1:7420", Some(b"PEM"), Some("tok"));
        let p = write(dir.path(), "kubeconfig", &k.to_yaml());
        let o = Overrides { kubeconfig: Some(p.clone()), ..Default::default() };
        let (c, source) = o.resolve("https://default:1").unwrap();
        assert_eq!(c.server, "https://127.0.0.1:7420");
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert_eq!(c.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(c.namespace.as_deref(), Some("default"));
        assert_eq!(source, Source::Files(vec![p]));
        // kubectl's own reading of the same text: the keys it looks for.
        let v: serde_yaml::Value = serde_yaml::from_str(&k.to_yaml()).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["certificate-authority-data"], "UEVN");
        assert_eq!(v["current-context"], "steward");
        assert_eq!(v["users"][0]["user"]["token"], "tok");
    }

    #[test]
    fn flags_override_the_file_and_env_lists_merge_first_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "CA").unwrap();
        std::fs::write(dir.path().join("tok"), "filetoken\n").unwrap();
        let a = write(
            dir.path(),
            "a",
            "apiVersion: v1\nkind: Config\ncurrent-context: one\ncontexts:\n- name: one\n  context: {cluster: c, user: u, namespace: prod}\n",
        );
        let b = write(
            dir.path(),
            "b",
            "clusters:\n- name: c\n  cluster: {server: 'https://h:1', certificate-authority: ca.pem}\nusers:\n- name: u\n  user: {tokenFile: tok}\ncurrent-context: two\n",
        );
        let env = format!("{}:{}:{}", dir.path().join("missing").display(), a.display(), b.display());
        let o = Overrides { kubeconfig_env: Some(env.clone()), ..Default::default() };
        let (c, _) = o.resolve("x").unwrap();
        assert_eq!((c.server.as_str(), c.token.as_deref(), c.namespace.as_deref()), ("https://h:1", Some("filetoken"), Some("prod")));
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]), "a relative CA path is relative to its file");
        let o = Overrides { kubeconfig_env: Some(env), server: Some("https://other:2".into()), token: Some("t2".into()), ..Default::default() };
        let (c, _) = o.resolve("x").unwrap();
        assert_eq!((c.server.as_str(), c.token.as_deref()), ("https://other:2", Some("t2")));
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]), "--server keeps the cluster's CA, as kubectl does");
    }

    #[test]
    fn problems_name_the_file_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Overrides { kubeconfig: Some(missing), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().starts_with("--kubeconfig "), "{e}");
        let bad = write(dir.path(), "bad", "clusters: [ {");
        let e = Overrides { kubeconfig: Some(bad.clone()), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
        // A device would be read for ever; a huge file is refused too.
        let e = Overrides { kubeconfig: Some("/dev/zero".into()), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().contains("/dev/zero: not a regular file"), "{e}");
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'#'; (crate::MAX_FILE_BYTES + 1) as usize]).unwrap();
        let e = Overrides { kubeconfig: Some(huge), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let k = write(dir.path(), "k", "current-context: gone\n");
        let e = Overrides { kubeconfig: Some(k), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().contains("no context \"gone\""), "{e}");
        let k = write(
            dir.path(),
            "cert",
            "clusters: [{name: c, cluster: {server: 'https://h'}}]\nusers: [{name: u, user: {client-certificate-data: AAAA}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
        );
        let e = Overrides { kubeconfig: Some(k), ..Default::default() }.resolve("x").unwrap_err();
        assert!(e.to_string().contains("bearer tokens"), "{e}");
    }

    #[test]
    fn nothing_found_gives_the_default_server() {
        let o = Overrides { default_kubeconfig: Some("/nonexistent/kubeconfig".into()), ..Default::default() };
        let (c, source) = o.resolve("https://127.0.0.1:7420").unwrap();
        assert_eq!(c.server, "https://127.0.0.1:7420");
        assert_eq!(source, Source::None);
        assert!(c.token.is_none());
    }
}
