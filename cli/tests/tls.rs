//! HTTPS by default: the CA and serving certificate `serve` makes, the
//! kubeconfig it writes, the CLI and kubectl through that kubeconfig, a
//! wrong CA or token refused, the operator's own certificate files
//! reloaded, and a serving certificate renewed while serving.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const KUBECTL_HINT: &str = "kubectl 1.32 is expected at /usr/bin/kubectl (Debian: apt-get install -y kubectl from the Kubernetes apt repository)";

/// The steward CLI with only `env` to find its server (no machine
/// defaults in the way).
fn cli_env(env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_remove("KUBECONFIG").env_remove("STEWARD_SERVER").env_remove("STEWARD_TOKEN");
    c.env("STEWARD_DATA_DIR", "/nonexistent/steward-test");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(args).output().expect("run steward")
}

/// kubectl through `kubeconfig`, stdin closed.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().expect("dir"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e}; {KUBECTL_HINT}"))
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("stat").permissions()) & 0o777
}

/// The `expire date` of the certificate a server presents, as curl
/// reports it.
fn presented_expiry(url: &str, ca: &Path) -> String {
    let o = Command::new("curl")
        .args(["-sv", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .arg(format!("{url}/version"))
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}; apt-get install -y curl"));
    let err = stderr(&o);
    err.lines().find_map(|l| l.trim().strip_prefix("*  expire date: ").map(String::from)).unwrap_or_else(|| panic!("no certificate seen:\n{err}"))
}

#[test]
fn serve_makes_its_pki_and_a_kubeconfig_the_cli_and_kubectl_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = TestServer::start_tls(&data, &[]);
    assert!(server.url().starts_with("https://127.0.0.1:"), "{}", server.url());
    for (f, want) in [("pki/ca.crt", 0o644), ("pki/ca.key", 0o600), ("pki/serving.crt", 0o644), ("pki/serving.key", 0o600), ("kubeconfig", 0o600)]
    {
        assert_eq!(mode(&data.join(f)), want, "{f}");
    }
    let kubeconfig = data.join("kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains(&format!("server: {}", server.url())), "{text}");
    assert!(text.contains("certificate-authority-data: ") && text.contains(&format!("token: {}", server.token())), "{text}");

    // `steward kubeconfig` prints it.
    let o = cli_env(&[], &["kubeconfig", "--data-dir", &data.to_string_lossy()]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), text);
    let o = cli_env(&[], &["kubeconfig", "--data-dir", "/nonexistent/dir"]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("/nonexistent/dir/kubeconfig") && stderr(&o).contains("steward serve --data-dir"), "{}", stderr(&o));

    // The CLI through $KUBECONFIG and through --kubeconfig, nothing else.
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: web}\nspec: {image: busybox}\n").unwrap();
    let o = cli_env(&[("KUBECONFIG", &kubeconfig)], &["apply", "-f", &manifest.to_string_lossy()]);
    expect_code(&o, 0);
    let o = cli_env(&[], &["--kubeconfig", &kubeconfig.to_string_lossy(), "get", "containers", "-o", "name"]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o), "container.steward.dev/web\n");
    // The context's namespace is the default one.
    let prod = dir.path().join("prod-kubeconfig");
    std::fs::write(&prod, text.replace("namespace: default", "namespace: prod")).unwrap();
    let o = cli_env(&[("KUBECONFIG", &prod)], &["apply", "-f", &manifest.to_string_lossy()]);
    expect_code(&o, 0);
    let o = cli_env(&[("KUBECONFIG", &prod)], &["get", "containers", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let mut where_: Vec<String> = v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["namespace"].as_str().unwrap().to_string()).collect();
    where_.sort();
    assert_eq!(where_, ["default", "prod"]);

    // kubectl, through the same file, with authentication on.
    let o = kubectl(&kubeconfig, &["get", "containers"]);
    assert!(o.status.success(), "kubectl get: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("NAME") && stdout(&o).contains("web"), "{}", stdout(&o));
    // Without the token, or with a wrong one: 401, which kubectl words
    // as it does for any apiserver. (With no credentials at all kubectl
    // asks for a username and password first, as it does of any
    // apiserver; the flags answer it.)
    let no_token = dir.path().join("no-token-kubeconfig");
    std::fs::write(&no_token, text.replace(&format!("    token: {}\n", server.token()), "")).unwrap();
    let wrong_token = dir.path().join("wrong-token-kubeconfig");
    std::fs::write(&wrong_token, text.replace(server.token(), "0123456789abcdef0123456789abcdef")).unwrap();
    for (what, file, extra) in [("no token", &no_token, &["--username", "nobody", "--password", "nothing"][..]), ("a wrong token", &wrong_token, &[])] {
        let mut args = vec!["get", "containers"];
        args.extend_from_slice(extra);
        let o = kubectl(file, &args);
        assert!(!o.status.success(), "{what}: {}", stdout(&o));
        assert!(stderr(&o).contains("error: You must be logged in to the server"), "{what}: {}", stderr(&o));
        let o = cli_env(&[("KUBECONFIG", file)], &["get", "containers"]);
        expect_code(&o, 1);
        assert!(stderr(&o).contains("Error from server (Unauthorized)"), "{what}: {}", stderr(&o));
    }

    // Plain HTTP to the HTTPS port: an answer that says so.
    let o = Command::new("curl").args(["-s"]).arg(server.url().replace("https://", "http://") + "/version").output().expect("curl");
    assert_eq!(stdout(&o), "Client sent an HTTP request to an HTTPS server.\n");

    // A restart keeps the CA: the kubeconfig (and copies of it) stay good.
    let ca_before = std::fs::read(data.join("pki/ca.crt")).unwrap();
    drop(server);
    let server = TestServer::start_tls(&data, &[]);
    assert_eq!(std::fs::read(data.join("pki/ca.crt")).unwrap(), ca_before);
    let o = cli_env(&[("KUBECONFIG", &prod)], &["--server", server.url(), "get", "containers", "-o", "name"]);
    expect_code(&o, 0);
}

#[test]
fn a_server_not_signed_by_the_trusted_ca_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = TestServer::start_tls(&dir.path().join("a"), &[]);
    let b = TestServer::start_tls(&dir.path().join("b"), &[]);
    // b's CA does not vouch for a.
    let b_ca = b.ca().expect("ca");
    let o = cli_env(&[], &["--server", a.url(), "--token", a.token(), "--certificate-authority", &b_ca.to_string_lossy(), "get", "containers"]);
    expect_code(&o, 1);
    assert_eq!(
        stderr(&o),
        format!(
            "error: cannot reach steward at {}: TLS: the server's certificate is not signed by a trusted CA (check certificate-authority-data in the kubeconfig)\n",
            a.url()
        )
    );
    // --insecure-skip-tls-verify goes past it, as kubectl's does.
    let o = cli_env(&[], &["--server", a.url(), "--token", a.token(), "--insecure-skip-tls-verify", "get", "containers"]);
    expect_code(&o, 0);
    // A name the certificate carries besides the address.
    let o = cli_env(
        &[],
        &["--server", &a.url().replace("127.0.0.1", "localhost"), "--token", a.token(), "--certificate-authority", &a.ca().unwrap().to_string_lossy(), "get", "containers"],
    );
    expect_code(&o, 0);
}

#[test]
fn the_operators_certificate_is_served_and_reloaded_when_its_files_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two CAs and their serving certificates, made by two stewards.
    let one = TestServer::start_tls(&dir.path().join("one"), &[]);
    let two = TestServer::start_tls(&dir.path().join("two"), &[]);
    let (ca1, ca2) = (one.ca().unwrap().to_path_buf(), two.ca().unwrap().to_path_buf());
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let (cert, key) = (files.join("tls.crt"), files.join("tls.key"));
    std::fs::copy(dir.path().join("one/pki/serving.crt"), &cert).unwrap();
    std::fs::copy(dir.path().join("one/pki/serving.key"), &key).unwrap();
    let data = dir.path().join("data");
    let server =
        TestServer::start_tls(&data, &["--tls-cert-file", &cert.to_string_lossy(), "--tls-private-key-file", &key.to_string_lossy()]);
    assert!(!data.join("pki").exists(), "no CA is made when the operator brings the certificate");
    let get = |ca: &Path| cli_env(&[], &["--server", server.url(), "--token", server.token(), "--certificate-authority", &ca.to_string_lossy(), "get", "containers"]);
    expect_code(&get(&ca1), 0);
    expect_code(&get(&ca2), 1);
    // The files change (a renewal by the operator's tooling): within the
    // check interval the new certificate is presented, with no restart.
    std::fs::copy(dir.path().join("two/pki/serving.key"), &key).unwrap();
    std::fs::copy(dir.path().join("two/pki/serving.crt"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&ca2).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the new certificate was not picked up:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    expect_code(&get(&ca1), 1);
    assert!(server.logs().contains("serving certificate reloaded"), "{}", server.logs());
    // A key that is not the certificate's is refused at start, by name.
    std::fs::copy(dir.path().join("one/pki/serving.key"), &key).unwrap();
    let o = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-controller", "--data-dir"])
        .arg(dir.path().join("data2"))
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-private-key-file")
        .arg(&key)
        .output()
        .expect("serve");
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&format!("{}: does not belong to the certificate", key.display())), "{}", stderr(&o));
}

#[test]
fn a_serving_certificate_is_renewed_while_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Valid 30 s: renewed when 10 s are left.
    let server = TestServer::start_tls(&data, &["--tls-cert-validity", "30s"]);
    let ca = server.ca().unwrap().to_path_buf();
    let first = presented_expiry(server.url(), &ca);
    // A watch opened on the first certificate lives through the renewal.
    let mut watch = Command::new(BIN)
        .env_remove("KUBECONFIG")
        .env("STEWARD_TOKEN", server.token())
        .args(["--server", server.url(), "--certificate-authority", &ca.to_string_lossy(), "get", "containers", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = presented_expiry(server.url(), &ca);
        if now != first {
            break;
        }
        assert!(Instant::now() < deadline, "still presenting the certificate expiring {first}:\n{}", server.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(server.logs().contains("serving certificate renewed"), "{}", server.logs());
    assert!(watch.try_wait().expect("watch status").is_none(), "the watch ended at the renewal");
    let manifest = dir.path().join("c.yaml");
    std::fs::write(&manifest, "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: after}\nspec: {image: busybox}\n").unwrap();
    let o = server.steward(&["apply", "-f", &manifest.to_string_lossy()]);
    expect_code(&o, 0);
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    assert!(stdout(&out).contains("/after"), "the watch missed the create: {}", stdout(&out));
}

#[test]
fn plain_http_and_no_auth_stay_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, says) in [("--plain-http", "--plain-http would send its token in clear"), ("--no-auth", "--no-auth would let anyone run it")] {
        let o = Command::new(BIN)
            .args(["serve", "--listen", "0.0.0.0:0", "--no-controller", flag, "--data-dir"])
            .arg(dir.path().join("d"))
            .output()
            .expect("serve");
        expect_code(&o, 1);
        assert!(stderr(&o).contains("--listen 0.0.0.0:0") && stderr(&o).contains(says), "{}", stderr(&o));
    }
    let o = Command::new(BIN).args(["serve", "--plain-http", "--tls-san", "x", "--data-dir"]).arg(dir.path().join("d")).output().expect("serve");
    expect_code(&o, 2);
    assert!(stderr(&o).contains("--tls-san"), "{}", stderr(&o));
}

#[test]
fn completion_scripts_and_live_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = TestServer::start_tls(&data, &[]);
    let kubeconfig = data.join("kubeconfig");
    let manifest = dir.path().join("m.yaml");
    std::fs::write(&manifest, "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: webby}\nspec: {image: busybox}\n").unwrap();
    expect_code(&server.steward(&["apply", "-f", &manifest.to_string_lossy()]), 0);
    for shell in ["bash", "zsh", "fish"] {
        let o = cli_env(&[], &["completion", shell]);
        expect_code(&o, 0);
        assert!(stdout(&o).contains("COMPLETE="), "{shell}: {}", stdout(&o));
    }
    // What the bash script asks, as bash would: the live name completes.
    let ask = |words: &[&str]| {
        let mut c = Command::new(BIN);
        c.env("COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_COMPLETE_COMP_TYPE", "9")
            .env("_CLAP_COMPLETE_SPACE", "true")
            .env("KUBECONFIG", &kubeconfig)
            .env("STEWARD_DATA_DIR", "/nonexistent/steward-test")
            .arg("--")
            .args(words);
        stdout(&c.output().expect("complete"))
    };
    let names = ask(&["steward", "describe", "container", "we"]);
    assert!(names.lines().any(|l| l == "webby"), "{names}");
    let kinds = ask(&["steward", "get", "con"]);
    assert!(kinds.lines().any(|l| l == "containers"), "{kinds}");
    let verbs = ask(&["steward", "ev"]);
    assert!(verbs.lines().any(|l| l == "events"), "{verbs}");
}

#[test]
fn a_ca_that_ends_first_is_said_once_and_a_foreign_ca_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Serving certificates asked for longer than the CA lives: the one
    // issued ends with the CA, and renewing cannot help: said, not looped.
    let server = TestServer::start_tls(&dir.path().join("long"), &["--tls-cert-validity", "262800h"]);
    std::thread::sleep(Duration::from_secs(2));
    let logs = server.logs();
    assert_eq!(logs.matches("expires before the serving certificate could be renewed").count(), 1, "{logs}");
    assert!(!logs.contains("serving certificate renewed"), "{logs}");
    drop(server);
    // DATA/pki/ca.crt replaced by another CA: refused at start, by name.
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    drop(TestServer::start_tls(&a, &[]));
    drop(TestServer::start_tls(&b, &[]));
    std::fs::copy(b.join("pki/ca.crt"), a.join("pki/ca.crt")).unwrap();
    let o = Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0", "--no-controller", "--data-dir"]).arg(&a).output().expect("serve");
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&format!("{}: certificates signed with ca.key do not verify", a.join("pki/ca.crt").display())), "{}", stderr(&o));
    // A --tls-san that cannot be a certificate name is refused, by flag.
    let o = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-controller", "--tls-san", "foo bar", "--data-dir"])
        .arg(dir.path().join("c"))
        .output()
        .expect("serve");
    expect_code(&o, 1);
    assert!(stderr(&o).contains("--tls-san \"foo bar\""), "{}", stderr(&o));
}
