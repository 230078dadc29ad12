//! The `steward` client verbs against a real `steward serve`.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write manifest");
}

fn start(dir: &Path) -> TestServer {
    TestServer::start(&dir.join("data"))
}

/// Names printed by `get containers -o name`, sorted.
fn names(server: &TestServer) -> Vec<String> {
    let out = server.steward(&["get", "containers", "-o", "name"]);
    expect_code(&out, 0);
    let mut v: Vec<String> = stdout(&out).lines().map(String::from).collect();
    v.sort();
    v
}

/// True when the object is gone, or on its way (a finalizer holds it and
/// no controller runs in these tests).
fn gone_or_terminating(server: &TestServer, name: &str) -> bool {
    let out = server.steward(&["get", "containers", name, "-o", "json"]);
    if out.status.code() == Some(1) && stderr(&out).contains("NotFound") {
        return true;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["metadata"]["deletionTimestamp"].is_string()
}

#[test]
fn apply_folder_created_unchanged_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let m = dir.path().join("manifests");
    write(
        &m.join("a.yaml"),
        &format!("{}---\n{}", manifest("web", "busybox:1.36", "demo"), manifest("db", "busybox:1.36", "demo")),
    );
    write(
        &m.join("c.json"),
        r#"{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{"name":"api"},"spec":{"image":"busybox:1.36"}}"#,
    );
    write(
        &m.join("sub/b.yml"),
        &format!("---\n{}---\n{}", manifest("cache", "busybox:1.36", "demo"), manifest("queue", "busybox:1.36", "demo")),
    );
    write(&m.join("README.txt"), "not a manifest");
    let path = m.display().to_string();

    let out = server.steward(&["apply", "-f", &path]);
    expect_code(&out, 0);
    // Files in path order, documents in file order.
    assert_eq!(
        stdout(&out),
        "container.steward.dev/web created\n\
         container.steward.dev/db created\n\
         container.steward.dev/api created\n\
         container.steward.dev/cache created\n\
         container.steward.dev/queue created\n"
    );

    let out = server.steward(&["apply", "-f", &path]);
    expect_code(&out, 0);
    assert_eq!(stdout(&out).matches(" unchanged\n").count(), 5, "{}", stdout(&out));

    write(
        &m.join("a.yaml"),
        &format!("{}---\n{}", manifest("web", "busybox:1.37", "demo"), manifest("db", "busybox:1.36", "demo")),
    );
    // A dry run reports the change but makes none.
    let out = server.steward(&["apply", "--dry-run", "-f", &path]);
    expect_code(&out, 0);
    assert!(stdout(&out).contains("container.steward.dev/web configured (dry run)\n"), "{}", stdout(&out));
    let out = server.steward(&["get", "ct", "web", "-o", "json"]);
    expect_code(&out, 0);
    assert!(stdout(&out).contains("busybox:1.36"), "{}", stdout(&out));

    let out = server.steward(&["apply", "-f", &path]);
    expect_code(&out, 0);
    assert_eq!(
        stdout(&out),
        "container.steward.dev/web configured\n\
         container.steward.dev/db unchanged\n\
         container.steward.dev/api unchanged\n\
         container.steward.dev/cache unchanged\n\
         container.steward.dev/queue unchanged\n"
    );

    // The table has the five objects.
    let out = server.steward(&["get", "containers"]);
    expect_code(&out, 0);
    let table = stdout(&out);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("STATUS") && table.contains("RESTARTS") && table.contains("AGE"), "{table}");
    assert_eq!(table.lines().count(), 6, "{table}");
}

#[test]
fn bad_documents_are_named_and_the_others_still_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let m = dir.path().join("m");
    // Document 2 passes parsing but fails server validation; document 3
    // has a field the schema does not know.
    let bad_env = "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: broken}\n\
                   spec:\n  image: busybox\n  env: [{name: \"1BAD\", value: x}]\n";
    let unknown = "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: typo}\n\
                   spec: {image: busybox, colour: red}\n";
    let file = m.join("mixed.yaml");
    write(
        &file,
        &format!("{}---\n{bad_env}---\n{unknown}---\n{}", manifest("one", "busybox", "x"), manifest("two", "busybox", "x")),
    );
    let file = file.display().to_string();

    let out = server.steward(&["apply", "-f", &file]);
    expect_code(&out, 1);
    assert_eq!(stdout(&out), "container.steward.dev/one created\ncontainer.steward.dev/two created\n");
    let err = stderr(&out);
    assert!(err.contains(&format!("error: {file}: document 2: spec.env[0].name: ")), "{err}");
    assert!(err.contains(&format!("error: {file}: document 3: spec.colour: unknown field")), "{err}");
    assert_eq!(names(&server), ["container.steward.dev/one", "container.steward.dev/two"]);
}

#[test]
fn prune_deletes_only_selected_objects_no_longer_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let m = dir.path().join("m");
    write(&m.join("a.yaml"), &manifest("a", "busybox", "demo"));
    write(&m.join("b.yaml"), &manifest("b", "busybox", "demo"));
    write(&m.join("c.yaml"), &manifest("c", "busybox", "demo"));
    let path = m.display().to_string();
    expect_code(&server.steward(&["apply", "-f", &path]), 0);
    // Not in the folder and not selected: prune must leave it alone.
    let other = dir.path().join("other.yaml");
    write(&other, &manifest("other", "busybox", "other"));
    expect_code(&server.steward(&["apply", "-f", &other.display().to_string()]), 0);

    fs::remove_file(m.join("c.yaml")).expect("rm");
    let out = server.steward(&["apply", "-f", &path, "--prune", "-l", "app=demo"]);
    expect_code(&out, 0);
    assert_eq!(
        stdout(&out),
        "container.steward.dev/a unchanged\ncontainer.steward.dev/b unchanged\ncontainer.steward.dev/c pruned\n"
    );
    assert!(gone_or_terminating(&server, "c"));
    for name in ["a", "b", "other"] {
        let out = server.steward(&["get", "ct", name]);
        expect_code(&out, 0);
        assert!(!stdout(&out).contains("Terminating"), "{name}: {}", stdout(&out));
    }

    // A document that cannot be read might hold an object to keep: no prune.
    write(&m.join("b.yaml"), "metadata: {name: b\n");
    let out = server.steward(&["apply", "-f", &path, "--prune", "-l", "app=demo"]);
    expect_code(&out, 1);
    assert!(!stdout(&out).contains("pruned"), "{}", stdout(&out));
    assert!(stderr(&out).contains("not pruning"), "{}", stderr(&out));
}

#[test]
fn diff_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let file = dir.path().join("web.yaml");
    let path = file.display().to_string();
    write(&file, &manifest("web", "busybox:1.36", "web"));

    // Not there yet: all additions.
    let out = server.steward(&["diff", "-f", &path]);
    expect_code(&out, 1);
    assert!(stdout(&out).contains("+++ merged/default/web\n"), "{}", stdout(&out));
    assert!(stdout(&out).contains("+  image: busybox:1.36\n"), "{}", stdout(&out));

    expect_code(&server.steward(&["apply", "-f", &path]), 0);
    let out = server.steward(&["diff", "-f", &path]);
    expect_code(&out, 0);
    assert_eq!(stdout(&out), "");

    write(&file, &manifest("web", "busybox:1.37", "web"));
    let out = server.steward(&["diff", "-f", &path]);
    expect_code(&out, 1);
    let d = stdout(&out);
    assert!(d.contains("--- live/default/web\n+++ merged/default/web\n@@ "), "{d}");
    assert!(d.contains("-  image: busybox:1.36\n+  image: busybox:1.37\n"), "{d}");
    // diff changed nothing.
    let out = server.steward(&["diff", "-f", &path]);
    expect_code(&out, 1);

    write(&file, "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {name: web}\nspec: {image: \"\"}\n");
    let out = server.steward(&["diff", "-f", &path]);
    expect_code(&out, 2);
    assert!(stderr(&out).contains("spec.image"), "{}", stderr(&out));

    let mut server = server;
    server.kill();
    expect_code(&server.steward(&["diff", "-f", &path]), 2);
}

#[test]
fn get_json_round_trips_through_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let file = dir.path().join("two.yaml");
    write(&file, &format!("{}---\n{}", manifest("a", "busybox", "rt"), manifest("b", "busybox", "rt")));
    expect_code(&server.steward(&["apply", "-f", &file.display().to_string()]), 0);

    let out = server.steward(&["get", "containers", "-o", "json"]);
    expect_code(&out, 0);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("get -o json is JSON");
    assert_eq!(list["kind"], "ContainerList");
    assert_eq!(list["apiVersion"], "steward.dev/v1alpha1");
    assert!(list["metadata"]["resourceVersion"].is_string());
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));

    let again = server.steward_stdin(&["apply", "-f", "-"], &stdout(&out));
    expect_code(&again, 0);
    assert_eq!(stdout(&again), "container.steward.dev/a unchanged\ncontainer.steward.dev/b unchanged\n");

    // One name prints the object itself, and YAML works the same way.
    let out = server.steward(&["get", "ct", "a", "-o", "yaml"]);
    expect_code(&out, 0);
    assert!(stdout(&out).contains("kind: Container\n"), "{}", stdout(&out));
    let again = server.steward_stdin(&["apply", "-f", "-"], &stdout(&out));
    expect_code(&again, 0);
    assert_eq!(stdout(&again), "container.steward.dev/a unchanged\n");
}

#[test]
fn delete_and_get_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path());
    let file = dir.path().join("x.yaml");
    write(&file, &manifest("x", "busybox", "x"));
    expect_code(&server.steward(&["apply", "-f", &file.display().to_string()]), 0);

    let out = server.steward(&["delete", "containers", "x", "nope"]);
    expect_code(&out, 1);
    assert_eq!(stdout(&out), "container.steward.dev/x deleted\n");
    assert!(stderr(&out).starts_with("Error from server (NotFound): "), "{}", stderr(&out));
    assert!(gone_or_terminating(&server, "x"));

    let out = server.steward(&["get", "ct", "nope"]);
    expect_code(&out, 1);
    assert!(stderr(&out).starts_with("Error from server (NotFound): "), "{}", stderr(&out));
}

#[test]
fn server_down_is_one_clear_line() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [&["get", "containers"][..], &["delete", "ct", "web"], &["wait", "container/web", "--for=delete"]] {
        let out = steward_at(&url, args, None);
        expect_code(&out, 1);
        assert_eq!(stderr(&out), format!("error: cannot reach steward at {url}: connection refused\n"), "{args:?}");
        assert_eq!(stdout(&out), "");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("x.yaml");
    write(&file, &manifest("x", "busybox", "x"));
    let out = steward_at(&url, &["apply", "-f", &file.display().to_string()], None);
    expect_code(&out, 1);
    assert_eq!(stderr(&out), format!("error: cannot reach steward at {url}: connection refused\n"));
    expect_code(&steward_at(&url, &["diff", "-f", &file.display().to_string()], None), 2);
}

#[test]
fn server_killed_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(dir.path());
    expect_code(&server.steward(&["get", "containers"]), 0);
    server.kill();
    let out = server.steward(&["get", "containers"]);
    expect_code(&out, 1);
    assert_eq!(stderr(&out), format!("error: cannot reach steward at {}: connection refused\n", server.url()));
}

#[test]
fn the_api_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let token_file = dir.path().join("data/token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the token file is readable by others");
    let out = steward_at(server.url(), &["get", "containers"], None);
    expect_code(&out, 1);
    assert!(stderr(&out).contains("Error from server (Unauthorized)"), "{}", stderr(&out));
    let out = steward_at(server.url(), &["--token-file", &token_file.to_string_lossy(), "get", "containers"], None);
    expect_code(&out, 0);
}

/// `steward config check` and `serve --config`: a valid file is accepted
/// (its digest printed, the server logs it), a bad one is refused before
/// anything starts, naming file, key and problem; flags override the file.
#[test]
fn the_configuration_file_is_checked_and_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    write(
        &good,
        "controller:\n  concurrency: 2\n  resyncPeriod: 1m\nlog:\n  level: debug\n  format: json\nstore:\n  compactionWindow: 30m\n",
    );
    let out = steward_at("http://127.0.0.1:1", &["config", "check", &good.to_string_lossy()], None);
    expect_code(&out, 0);
    assert!(stdout(&out).contains("valid, digest sha256:"), "{}", stdout(&out));

    let bad = dir.path().join("bad.yaml");
    write(&bad, "runtimes:\n  handlers:\n    runc: {runtime: runc, argz: [--debug]}\n");
    let out = steward_at("http://127.0.0.1:1", &["config", "check", &bad.to_string_lossy()], None);
    expect_code(&out, 1);
    let msg = stderr(&out);
    assert!(msg.contains("bad.yaml: runtimes.handlers.runc.argz: unknown field `argz`"), "{msg}");

    // serve refuses it before it opens anything.
    let data = dir.path().join("data");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-controller", "--plain-http", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run serve");
    expect_code(&out, 1);
    assert!(stderr(&out).contains("--config: ") && stderr(&out).contains("runtimes.handlers.runc.argz"), "{}", stderr(&out));
    assert!(!data.exists(), "a refused configuration must not create the data dir");

    // A good one is used: JSON logs at debug, the digest logged; the
    // event-retention flag overrides store.compactionWindow.
    let server = TestServer::start_with(&data, &["--config", &good.to_string_lossy(), "--event-retention", "5m"]);
    let digest = stdout(&steward_at("http://127.0.0.1:1", &["config", "check", &good.to_string_lossy()], None))
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let logs = server.logs();
    let loaded = logs.lines().find(|l| l.contains("configuration loaded")).unwrap_or_else(|| panic!("no load line in:\n{logs}"));
    let v: serde_json::Value = serde_json::from_str(loaded).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {loaded}"));
    assert_eq!(v["fields"]["digest"], digest.as_str(), "{loaded}");
    // log.level debug: the store's snapshot (2 s after a write) says so.
    let m = dir.path().join("m.yaml");
    write(&m, &manifest("cfg", "busybox", "x"));
    expect_code(&server.steward(&["apply", "-f", &m.to_string_lossy()]), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.logs().contains("\"level\":\"DEBUG\"") {
        assert!(std::time::Instant::now() < deadline, "no DEBUG line: log.level debug did not apply:\n{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A raw HTTP/1.1 request (the tests' own, no client library): status code
/// and body.
fn http(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(c, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).expect("send");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Live reload: `POST /-/reload` (token required, no body) and SIGHUP swap
/// in a valid file and answer with its digest; a changed restart-only key
/// is named; an invalid file is refused naming the key and changes
/// nothing; `/metrics` counts both.
#[test]
fn the_configuration_reloads_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    write(&file, "images:\n  gc: {highThresholdPercent: 90, lowThresholdPercent: 70}\n");
    let server = TestServer::start_with(&dir.path().join("data"), &["--config", &file.to_string_lossy()]);
    let check = |f: &Path| {
        let out = steward_at("http://127.0.0.1:1", &["config", "check", &f.to_string_lossy()], None);
        stdout(&out).rsplit(' ').next().unwrap_or_default().trim().to_string()
    };
    let url = server.url().to_string();
    let (code, _) = http(&url, "POST", "/-/reload", None, "");
    assert_eq!(code, 401, "the token is required");
    let (code, body) = http(&url, "POST", "/-/reload", Some(server.token()), "x");
    assert_eq!(code, 400, "{body}");

    // A live key changed.
    write(&file, "images:\n  gc: {highThresholdPercent: 95, lowThresholdPercent: 70}\n");
    let (code, body) = http(&url, "POST", "/-/reload", Some(server.token()), "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["digest"], check(&file).as_str(), "{body}");
    assert_eq!(v["restartRequired"], serde_json::json!([]), "{body}");

    // A restart-only key changed: said so.
    write(&file, "controller: {concurrency: 7}\n");
    let (code, body) = http(&url, "POST", "/-/reload", Some(server.token()), "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"restartRequired\":[\"controller.concurrency\"]") && body.contains("only after a restart"), "{body}");

    // An invalid file: refused, naming the key; nothing changes.
    write(&file, "controller: {concurrency: 7, resync: 1m}\n");
    let (code, body) = http(&url, "POST", "/-/reload", Some(server.token()), "");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("controller.resync: unknown field `resync`"), "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.logs().contains("configuration reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // SIGHUP reloads too, and logs the digest.
    write(&file, "controller: {concurrency: 7}\nimages: {gc: {highThresholdPercent: 99, lowThresholdPercent: 1}}\n");
    let digest = check(&file);
    // SAFETY: kill(2) on the pid of our own child.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.logs().lines().any(|l| l.contains("configuration reloaded") && l.contains(&digest)) {
        assert!(std::time::Instant::now() < deadline, "no reload line with {digest} after SIGHUP:\n{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, metrics) = http(&url, "GET", "/metrics", Some(server.token()), "");
    assert!(metrics.contains("steward_config_reloads_total{result=\"success\"} 3"), "{metrics}");
    assert!(metrics.contains("steward_config_reloads_total{result=\"failure\"} 1"), "{metrics}");
}
