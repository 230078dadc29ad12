//! The API server on an ephemeral port, with a real SQLite file, over real HTTP.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use steward_store::{Config as StoreConfig, Store};

const BASE: &str = "/apis/steward.dev/v1alpha1";

struct TestServer {
    url: String,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}, Default::default()).await
    }

    async fn start_with(tune: impl FnOnce(&mut StoreConfig), api: steward_apiserver::Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path().join("steward.db"));
        tune(&mut cfg);
        let store = Store::open(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(steward_apiserver::serve(listener, store.clone(), api, async {
            let _ = rx.await;
        }));
        TestServer { url, store, stop: Some(tx), done: Some(done), client: Client::new(), _dir: dir }
    }

    fn ns_url(&self, path: &str) -> String {
        format!("{}{BASE}/namespaces/default/containers{path}", self.url)
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(10), d).await.expect("shutdown hung").unwrap().unwrap();
        }
    }
}

fn container(name: &str) -> Value {
    json!({
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "Container",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"image": "127.0.0.1:5000/busybox:1.36", "args": ["sleep", "3600"]}
    })
}

async fn body(r: Response) -> (StatusCode, Value) {
    let code = r.status();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create(s: &TestServer, obj: &Value) -> Value {
    let (code, v) = body(s.client.post(s.ns_url("")).json(obj).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    v
}

fn rv(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn crud_conflict_and_generation() {
    let s = TestServer::start().await;
    let c = create(&s, &container("web")).await;
    assert_eq!(c["metadata"]["generation"], 1);
    assert_eq!(c["metadata"]["namespace"], "default");
    assert!(c["metadata"]["uid"].as_str().unwrap().len() > 10);
    assert!(c["metadata"]["creationTimestamp"].is_string());
    assert_eq!(c["spec"]["restartPolicy"], "Always", "defaults are filled in");

    let (code, got) = body(s.client.get(s.ns_url("/web")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(got, c);

    // Duplicate create.
    let (code, st) = body(s.client.post(s.ns_url("")).json(&container("web")).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(st["kind"], "Status");

    // Update with the current resourceVersion: generation moves with spec.
    let mut upd = c.clone();
    upd["spec"]["args"] = json!(["sleep", "10"]);
    let (code, u) = body(s.client.put(s.ns_url("/web")).json(&upd).send().await.unwrap()).await;
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["metadata"]["generation"], 2);
    assert!(rv(&u) > rv(&c));

    // The same stale body again: Conflict.
    let (code, st) = body(s.client.put(s.ns_url("/web")).json(&upd).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (409, Some("Conflict")));

    // Label-only change keeps generation.
    let mut lab = u.clone();
    lab["metadata"]["labels"]["tier"] = json!("front");
    let (_, l) = body(s.client.put(s.ns_url("/web")).json(&lab).send().await.unwrap()).await;
    assert_eq!(l["metadata"]["generation"], 2);

    // Delete without finalizers: gone at once.
    let (code, _) = body(s.client.delete(s.ns_url("/web")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    let (code, st) = body(s.client.get(s.ns_url("/web")).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test]
async fn status_subresource_and_finalizers() {
    let s = TestServer::start().await;
    let mut obj = container("fin");
    obj["metadata"]["finalizers"] = json!(["steward.dev/containerd"]);
    obj["status"] = json!({"phase": "Running"});
    let c = create(&s, &obj).await;
    assert!(c.get("status").is_none(), "status is not written by create");

    // Status through /status; spec in the same body is ignored.
    let mut st = c.clone();
    st["status"] = json!({"phase": "Running", "restartCount": 1, "state": {"running": {"startedAt": "2026-11-23T08:00:00Z"}}});
    st["spec"]["image"] = json!("other");
    let (code, after) = body(s.client.put(s.ns_url("/fin/status")).json(&st).send().await.unwrap()).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(after["spec"]["image"], c["spec"]["image"]);
    assert_eq!(after["metadata"]["generation"], 1);

    // Status on the main resource is ignored.
    let mut main = after.clone();
    main["status"] = json!({"phase": "Failed"});
    let (_, m) = body(s.client.put(s.ns_url("/fin")).json(&main).send().await.unwrap()).await;
    assert_eq!(m["status"]["phase"], "Running");

    // Invalid status: two states.
    let (code, e) = body(
        s.client
            .patch(s.ns_url("/fin/status"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"status":{"state":{"waiting":{"reason":"X"}}}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code.as_u16(), e["reason"].as_str()), (422, Some("Invalid")), "{e}");
    assert_eq!(e["details"]["causes"][0]["field"], "status.state");

    // Delete: deletionTimestamp set, object stays.
    let (code, d) = body(s.client.delete(s.ns_url("/fin")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = body(s.client.get(s.ns_url("/fin")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    // Removing the finalizer removes the object.
    let (code, _) = body(
        s.client
            .patch(s.ns_url("/fin"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"metadata":{"finalizers":null}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = body(s.client.get(s.ns_url("/fin")).send().await.unwrap()).await;
    assert_eq!(code, 404);
}

async fn apply(s: &TestServer, name: &str, yaml: &str, dry: bool) -> (StatusCode, String, Value) {
    let q = if dry { "?dryRun=All&fieldManager=t" } else { "?fieldManager=t" };
    let r = s
        .client
        .patch(s.ns_url(&format!("/{name}{q}")))
        .header("content-type", "application/apply-patch+yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let outcome = r.headers().get("x-steward-apply").map(|h| h.to_str().unwrap().to_string()).unwrap_or_default();
    let (code, v) = body(r).await;
    (code, outcome, v)
}

#[tokio::test]
async fn apply_noop_writes_nothing_and_dry_run_stores_nothing() {
    let s = TestServer::start().await;
    let yaml = "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: a\nspec:\n  image: busybox\n";
    let (code, out, _) = apply(&s, "a", yaml, true).await;
    assert_eq!((code.as_u16(), out.as_str()), (201, "created"));
    assert_eq!(s.store.revision(), 0, "dry run wrote");
    let (code, out, v) = apply(&s, "a", yaml, false).await;
    assert_eq!((code.as_u16(), out.as_str()), (201, "created"), "{v}");
    let rev = s.store.revision();
    for _ in 0..3 {
        let (code, out, v2) = apply(&s, "a", yaml, false).await;
        assert_eq!((code.as_u16(), out.as_str()), (200, "unchanged"));
        assert_eq!(v2["metadata"]["resourceVersion"], v["metadata"]["resourceVersion"]);
    }
    assert_eq!(s.store.revision(), rev, "a no-op apply moved the revision");
    let (_, out, v3) = apply(&s, "a", &yaml.replace("busybox", "alpine"), false).await;
    assert_eq!(out, "configured");
    assert_eq!(v3["metadata"]["generation"], 2);
    // Dry-run update: answer shows the change, store keeps the old.
    let (_, out, v4) = apply(&s, "a", &yaml.replace("busybox", "debian"), true).await;
    assert_eq!((out.as_str(), v4["spec"]["image"].as_str()), ("configured", Some("debian")));
    assert_eq!(s.store.revision(), rev + 1);
    // JSON body works too (kubectl sends JSON).
    let (code, out, _) = apply(&s, "b", &container("b").to_string(), false).await;
    assert_eq!((code.as_u16(), out.as_str()), (201, "created"));
}

#[tokio::test]
async fn error_codes() {
    let s = TestServer::start_with(|_| {}, steward_apiserver::Config { max_body_bytes: 4096, ..Default::default() }).await;
    let post = |b: String, ct: &str| s.client.post(s.ns_url("")).header("content-type", ct.to_string()).body(b).send();

    // 400 malformed JSON, with line and column.
    let (code, st) = body(post("{\n  \"metadata\": {".into(), "application/json").await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (400, Some("BadRequest")));
    assert!(st["message"].as_str().unwrap().contains("line 2 column"), "{st}");
    // 400 malformed YAML, with line and column.
    let (code, st) = body(post("metadata: {name: a\nspec: [".into(), "application/yaml").await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(st["message"].as_str().unwrap().contains("line"), "{st}");
    // 400 unknown field, named with its path.
    let mut bad = container("x");
    bad["spec"]["imag"] = json!("typo");
    let (code, st) = body(post(bad.to_string(), "application/json").await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(st["message"].as_str().unwrap().contains("spec.imag: unknown field `imag`"), "{st}");
    // 422 Invalid, every cause with its field path.
    let mut inv = container("Bad_Name");
    inv["spec"]["env"] = json!([{"name": "OK"}, {"name": "OK"}, {"name": "1x"}]);
    inv["spec"]["image"] = json!("");
    let (code, st) = body(post(inv.to_string(), "application/json").await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (422, Some("Invalid")));
    let fields: Vec<&str> = st["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["metadata.name", "spec.image", "spec.env[1].name", "spec.env[2].name"]);
    // 413 too large.
    let mut big = container("big");
    big["metadata"]["annotations"] = json!({"x": "y".repeat(8000)});
    let (code, st) = body(post(big.to_string(), "application/json").await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (413, Some("RequestEntityTooLarge")));
    // 415 unsupported media type, and none at all (a browser's cross-site
    // "simple request" sends none).
    let (code, st) = body(post("x".into(), "text/plain").await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, st) = body(s.client.post(s.ns_url("")).body(container("nct").to_string()).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{st}");
    // 404 on an unknown path, as a Status.
    let (code, st) = body(s.client.get(format!("{}/api/v2", s.url)).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (404, Some("NotFound")));
    // 405.
    let (code, st) = body(s.client.post(s.ns_url("/x")).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (405, Some("MethodNotAllowed")));
    // 400 bad selector and bad query value, naming the parameter.
    let (code, st) = body(s.client.get(s.ns_url("?labelSelector=a%20b%3Dc")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(st["message"].as_str().unwrap().starts_with("labelSelector"), "{st}");
    let (code, st) = body(s.client.get(s.ns_url("?limit=many")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(st["message"].as_str().unwrap().contains("limit"), "{st}");
    // Name in body and URL disagree.
    let (code, _) = body(s.client.put(s.ns_url("/other")).json(&container("x")).send().await.unwrap()).await;
    assert_eq!(code, 400);
    // Unknown parameters and a leading `?&` are ignored.
    let (code, _) = body(s.client.get(s.ns_url("?&fieldValidation=Strict&timeout=32s")).send().await.unwrap()).await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn list_pagination_and_selectors() {
    let s = TestServer::start().await;
    for i in 0..25 {
        let mut c = container(&format!("c{i:02}"));
        c["metadata"]["labels"] = json!({"app": if i % 2 == 0 { "even" } else { "odd" }, "n": i.to_string()});
        create(&s, &c).await;
    }
    // Another namespace.
    let (code, _) = body(
        s.client
            .post(format!("{}{BASE}/namespaces/other/containers", s.url))
            .json(&container("elsewhere"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201);

    let mut names = Vec::new();
    let mut cont = String::new();
    let mut first_rv = None;
    loop {
        let (code, page) = body(s.client.get(s.ns_url(&format!("?limit=10&continue={cont}"))).send().await.unwrap()).await;
        assert_eq!(code, 200);
        assert_eq!(page["kind"], "ContainerList");
        first_rv.get_or_insert(page["metadata"]["resourceVersion"].clone());
        assert_eq!(page["metadata"]["resourceVersion"], *first_rv.as_ref().unwrap());
        for it in page["items"].as_array().unwrap() {
            assert_eq!(it["kind"], "Container");
            names.push(it["metadata"]["name"].as_str().unwrap().to_string());
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
        // A write between pages does not disturb the pages: every page is
        // read at the first page's revision, so the new object is not in
        // this list.
        create(&s, &container(&format!("z{}", names.len()))).await;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(names, expected);

    let count = |q: &'static str| {
        let s = &s;
        async move {
            let (_, l) = body(s.client.get(format!("{}{BASE}/{q}", s.url)).send().await.unwrap()).await;
            l["items"].as_array().map(|a| a.len()).unwrap_or(usize::MAX)
        }
    };
    assert_eq!(count("namespaces/default/containers?labelSelector=app%3Deven").await, 13);
    assert_eq!(count("namespaces/default/containers?labelSelector=app!%3Deven,n").await, 12);
    assert_eq!(count("namespaces/default/containers?labelSelector=n%20in%20(1,2,3)").await, 3);
    assert_eq!(count("namespaces/default/containers?labelSelector=n%20notin%20(1,2,3),n").await, 22);
    assert_eq!(count("namespaces/default/containers?labelSelector=!n").await, 2);
    assert_eq!(count("namespaces/default/containers?fieldSelector=metadata.name%3Dc03").await, 1);
    assert_eq!(count("containers?fieldSelector=metadata.namespace%3Dother").await, 1);
    assert_eq!(count("containers").await, 28);
    assert_eq!(count("containers?fieldSelector=status.phase%3DRunning").await, 0);
}

/// Reads newline-delimited watch events.
struct WatchReader {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl WatchReader {
    async fn open(s: &TestServer, query: &str) -> Self {
        let r = s.client.get(s.ns_url(&format!("?watch=true&{query}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        WatchReader { stream: Box::pin(r.bytes_stream()), buf: Vec::new() }
    }

    /// The next event, or None when the server ended the stream.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout(Duration::from_secs(10), self.stream.next()).await.expect("watch stalled") {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => panic!("{e}"),
                None => return None,
            }
        }
    }
}

#[tokio::test]
async fn watch_from_revision_with_selectors_bookmarks_and_timeout() {
    let s = TestServer::start_with(
        |_| {},
        steward_apiserver::Config { bookmark_interval: Duration::from_millis(200), ..Default::default() },
    )
    .await;
    let a = create(&s, &container("a")).await;
    let from = rv(&a);
    let mut all = WatchReader::open(&s, &format!("resourceVersion={from}&allowWatchBookmarks=true")).await;
    let mut only_b = WatchReader::open(&s, &format!("resourceVersion={from}&fieldSelector=metadata.name%3Db")).await;
    let b = create(&s, &container("b")).await;
    let mut b2 = b.clone();
    b2["spec"]["image"] = json!("x");
    s.client.put(s.ns_url("/b")).json(&b2).send().await.unwrap();
    s.client.delete(s.ns_url("/a")).send().await.unwrap();

    let mut types = Vec::new();
    while types.len() < 3 {
        let e = all.next().await.unwrap();
        if e["type"] == "BOOKMARK" {
            continue;
        }
        types.push((e["type"].as_str().unwrap().to_string(), e["object"]["metadata"]["name"].as_str().unwrap().to_string(), rv(&e["object"])));
    }
    assert_eq!(
        types,
        [("ADDED".into(), "b".into(), from + 1), ("MODIFIED".into(), "b".into(), from + 2), ("DELETED".into(), "a".into(), from + 3)]
    );
    let e1 = only_b.next().await.unwrap();
    let e2 = only_b.next().await.unwrap();
    assert_eq!((e1["type"].as_str(), e2["type"].as_str()), (Some("ADDED"), Some("MODIFIED")));
    // Idle: a bookmark carrying the current revision arrives.
    loop {
        let e = all.next().await.unwrap();
        if e["type"] == "BOOKMARK" {
            assert_eq!(rv(&e["object"]), from + 3);
            break;
        }
    }
    // timeoutSeconds ends the stream.
    let mut t = WatchReader::open(&s, "resourceVersion=0&timeoutSeconds=1").await;
    assert_eq!(t.next().await.unwrap()["type"], "ADDED");
    assert!(t.next().await.is_none());
}

#[tokio::test]
async fn watch_of_compacted_revision_gets_expired_in_a_200() {
    let s = TestServer::start_with(|c| c.retention.max_events = 3, Default::default()).await;
    for i in 0..10 {
        create(&s, &container(&format!("c{i}"))).await;
    }
    s.store.compact().await.unwrap();
    let mut w = WatchReader::open(&s, "resourceVersion=2").await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!((e["object"]["code"].as_i64(), e["object"]["reason"].as_str()), (Some(410), Some("Expired")));
    assert!(w.next().await.is_none());
}

#[tokio::test]
async fn slow_http_watcher_is_cut() {
    let s = TestServer::start_with(|c| c.watch_buffer = 16, Default::default()).await;
    // Open a watch and never read it while writes pile up.
    let r = s.client.get(s.ns_url("?watch=true&resourceVersion=0")).send().await.unwrap();
    assert_eq!(s.store.watchers(), 1);
    let mut big = container("x");
    big["metadata"]["annotations"] = json!({"pad": "p".repeat(100_000)});
    for i in 0..200 {
        let mut c = big.clone();
        c["metadata"]["name"] = json!(format!("c{i}"));
        create(&s, &c).await;
        if s.store.watchers() == 0 {
            break;
        }
    }
    assert_eq!(s.store.watchers(), 0, "the unread watch was never cut");
    // The stream ends with an ERROR 410 after what it had buffered.
    let text = tokio::time::timeout(Duration::from_secs(20), r.text()).await.unwrap().unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!((last["type"].as_str(), last["object"]["code"].as_i64()), (Some("ERROR"), Some(410)));
    assert!(text.lines().count() < 200);
}

#[tokio::test]
async fn discovery_version_metrics_health() {
    let s = TestServer::start().await;
    create(&s, &container("m")).await;
    let (_, v) = body(s.client.get(format!("{}/version", s.url)).send().await.unwrap()).await;
    assert_eq!((v["major"].as_str(), v["minor"].as_str()), (Some("1"), Some("32")));
    let (_, g) = body(s.client.get(format!("{}/apis", s.url)).send().await.unwrap()).await;
    assert_eq!(g["groups"][0]["preferredVersion"]["version"], "v1alpha1");
    let (_, r) = body(s.client.get(format!("{}{BASE}", s.url)).send().await.unwrap()).await;
    assert_eq!(r["resources"][0]["kind"], "Container");
    for p in ["/healthz", "/readyz"] {
        assert_eq!(s.client.get(format!("{}{p}", s.url)).send().await.unwrap().status(), 200);
    }
    let m = s.client.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("steward_requests_total{verb=\"create\",code=\"201\"} 1"), "{m}");
    assert!(m.contains("steward_request_duration_seconds_count{verb=\"create\",code=\"201\"} 1"), "{m}");
    assert!(m.contains("steward_store_revision 1"), "{m}");
    assert!(m.contains("steward_watchers 0"), "{m}");
}

#[tokio::test]
async fn merge_and_json_patch() {
    let s = TestServer::start().await;
    create(&s, &container("p")).await;
    let send = |ct: &'static str, b: &'static str| {
        s.client.patch(s.ns_url("/p")).header("content-type", ct).body(b).send()
    };
    let (code, v) = body(send("application/merge-patch+json", r#"{"metadata":{"labels":{"app":null,"x":"y"}}}"#).await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["labels"], json!({"x": "y"}));
    let (code, v) = body(send("application/json-patch+json", r#"[{"op":"replace","path":"/spec/image","value":"alpine"}]"#).await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["spec"]["image"].as_str(), v["metadata"]["generation"].as_i64()), (Some("alpine"), Some(2)));
    let (code, _) = body(send("application/strategic-merge-patch+json", r#"{"spec":{"workingDir":"/tmp"}}"#).await.unwrap()).await;
    assert_eq!(code, 200);
    // A patch that makes the object invalid is refused with the field.
    let (code, st) = body(send("application/merge-patch+json", r#"{"spec":{"workingDir":"rel"}}"#).await.unwrap()).await;
    assert_eq!((code.as_u16(), st["details"]["causes"][0]["field"].as_str()), (422, Some("spec.workingDir")));
    // A stale explicit resourceVersion conflicts.
    let (code, _) = body(send("application/merge-patch+json", r#"{"metadata":{"resourceVersion":"1"},"spec":{"workingDir":"/"}}"#).await.unwrap()).await;
    assert_eq!(code, 409);
}

#[tokio::test]
async fn graceful_shutdown_ends_watches_and_keeps_writes() {
    let mut s = TestServer::start().await;
    create(&s, &container("g")).await;
    let mut w = WatchReader::open(&s, "resourceVersion=0").await;
    assert_eq!(w.next().await.unwrap()["type"], "ADDED");
    s.stop().await;
    assert!(w.next().await.is_none(), "watch did not end cleanly");
    assert!(s.client.get(s.ns_url("")).send().await.is_err(), "still accepting");
}

/// Over HTTP: watchers opened at different revisions while many clients
/// write each see exactly the revisions after their start, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_watchers_over_http() {
    let s = TestServer::start().await;
    // A first object, so no watcher starts at revision 0 (which means
    // "the current objects, in name order, then changes").
    create(&s, &container("seed")).await;
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let total = (WRITERS * EACH) as i64 + 1;
    let url = s.ns_url("");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, url) = (s.client.clone(), url.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    let r = client.post(&url).json(&container(&format!("w{w}-{i}"))).send().await.unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    let mut watchers = Vec::new();
    for i in 0..8u64 {
        tokio::time::sleep(Duration::from_millis(i * 5)).await;
        let from = s.store.revision();
        let mut w = WatchReader::open(&s, &format!("resourceVersion={from}")).await;
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while (seen.len() as i64) < total - from {
                let e = w.next().await.expect("watch ended early");
                assert_eq!(e["type"], "ADDED");
                seen.push(rv(&e["object"]));
            }
            (from, seen)
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for w in watchers {
        let (from, seen) = w.await.unwrap();
        assert_eq!(seen, (from + 1..=total).collect::<Vec<_>>(), "watcher from {from}");
    }
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let api = steward_apiserver::Config { token: Some("s3cret".into()), ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    let (code, st) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (401, Some("Unauthorized")));
    let (code, _) = body(s.client.get(s.ns_url("")).bearer_auth("wrong").send().await.unwrap()).await;
    assert_eq!(code, 401);
    let (code, _) = body(s.client.post(s.ns_url("")).bearer_auth("s3cret").json(&container("a")).send().await.unwrap()).await;
    assert_eq!(code, 201);
    let r = s.client.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401, "metrics are not public");
    for open in ["/healthz", "/readyz", "/version"] {
        assert_eq!(s.client.get(format!("{}{open}", s.url)).send().await.unwrap().status(), 200, "{open}");
    }
}

/// A paged list is one snapshot: later pages show objects as they were at
/// the first page's revision (a changed object as it was, a deleted one
/// still there, a new one absent), or 410 once that revision is gone.
#[tokio::test]
async fn later_pages_are_served_at_the_first_pages_revision() {
    let s = TestServer::start_with(|c| c.history_events = 50, Default::default()).await;
    for n in ["a", "b", "c", "d"] {
        create(&s, &container(n)).await;
    }
    let (_, p1) = body(s.client.get(s.ns_url("?limit=2")).send().await.unwrap()).await;
    let rv1 = p1["metadata"]["resourceVersion"].clone();
    let cont = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let patch = |name: &str, b: &'static str| {
        s.client.patch(s.ns_url(&format!("/{name}"))).header("content-type", "application/merge-patch+json").body(b).send()
    };
    let (code, _) = body(patch("c", r#"{"spec":{"image":"changed"}}"#).await.unwrap()).await;
    assert_eq!(code, 200);
    let (code, _) = body(s.client.delete(s.ns_url("/d")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    create(&s, &container("e")).await;
    let (code, p2) = body(s.client.get(s.ns_url(&format!("?limit=2&continue={cont}"))).send().await.unwrap()).await;
    assert_eq!(code, 200, "{p2}");
    assert_eq!(p2["metadata"]["resourceVersion"], rv1);
    let items: Vec<(&str, &str)> = p2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["metadata"]["name"].as_str().unwrap(), i["spec"]["image"].as_str().unwrap()))
        .collect();
    assert_eq!(items, [("c", "127.0.0.1:5000/busybox:1.36"), ("d", "127.0.0.1:5000/busybox:1.36")]);
    assert!(p2["metadata"]["continue"].is_null(), "{p2}");
    // Enough writes to push the first page's revision out of the history.
    for i in 0..60 {
        let body = if i % 2 == 0 { r#"{"metadata":{"labels":{"x":"1"}}}"# } else { r#"{"metadata":{"labels":{"x":"2"}}}"# };
        let (code, _) = body_of(patch("a", body).await.unwrap()).await;
        assert_eq!(code, 200);
    }
    let (code, st) = body(s.client.get(s.ns_url(&format!("?limit=2&continue={cont}"))).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (410, Some("Expired")), "{st}");
}

async fn body_of(r: Response) -> (StatusCode, Value) {
    body(r).await
}

/// The audit's reproduction: a JSON patch nesting a value ~120 deep inside
/// metadata.ownerReferences was stored, and the store then refused to
/// start. Now ownerReferences are typed, every write is depth-checked,
/// and the store reopens.
#[tokio::test]
async fn deep_values_are_refused_and_the_store_still_opens() {
    let mut s = TestServer::start().await;
    create(&s, &container("o")).await;
    let send = |ct: &'static str, b: String| s.client.patch(s.ns_url("/o")).header("content-type", ct).body(b).send();
    let mut deep = json!("x");
    for _ in 0..120 {
        deep = json!({ "a": deep });
    }
    // Not an OwnerReference: refused when decoding.
    let p = json!([{"op": "add", "path": "/metadata/ownerReferences", "value": [deep.clone()]}]).to_string();
    let (code, st) = body(send("application/json-patch+json", p).await.unwrap()).await;
    assert!(code.is_client_error(), "{st}");
    // Deep in spec (an unknown field would be refused too, but depth is
    // checked before anything else looks at it), and deep in status.
    let p = json!([{"op": "add", "path": "/spec/x", "value": deep.clone()}]).to_string();
    let (code, st) = body(send("application/json-patch+json", p).await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (422, Some("Invalid")), "{st}");
    let mut status_deep = json!("x");
    for _ in 0..70 {
        status_deep = json!([status_deep]);
    }
    let (code, st) = body(
        s.client
            .patch(s.ns_url("/o/status"))
            .header("content-type", "application/merge-patch+json")
            .body(json!({"status": {"message": status_deep}}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(code.is_client_error(), "{st}");
    // A valid owner reference is kept.
    let owner = json!({"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "u-1", "controller": true});
    let p = json!({"metadata": {"ownerReferences": [owner.clone()]}}).to_string();
    let (code, v) = body(send("application/merge-patch+json", p).await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["ownerReferences"], json!([owner]));
    // One missing its uid is 422 naming the field.
    let p = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": ""}]}}).to_string();
    let (code, st) = body(send("application/merge-patch+json", p).await.unwrap()).await;
    assert_eq!((code.as_u16(), st["details"]["causes"][0]["field"].as_str()), (422, Some("metadata.ownerReferences[0].uid")));
    // An object over the stored-size cap (under the body cap) is 413.
    let mut big = container("big");
    big["spec"]["args"] = json!(["x".repeat(steward_store::MAX_OBJECT_BYTES)]);
    let (code, st) = body(s.client.post(s.ns_url("")).json(&big).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (413, Some("RequestEntityTooLarge")), "{st}");
    // And the store opens again with the object intact.
    s.stop().await;
    let store = Store::open(StoreConfig::new(s._dir.path().join("steward.db"))).await.unwrap();
    let o = store.get(&steward_store::Key::new("containers", "default", "o")).unwrap();
    assert_eq!(o.object.metadata.owner_references.len(), 1);
}

/// 20 `copy` ops, each doubling the object, and a 9 KB YAML whose aliases
/// expand to 10^8 nodes: both refused with a 4xx, quickly.
#[tokio::test]
async fn amplifying_patches_are_refused_quickly() {
    let s = TestServer::start().await;
    create(&s, &container("amp")).await;
    let mut ops = vec![json!({"op": "add", "path": "/metadata/annotations", "value": {"a": "x".repeat(1000)}})];
    for i in 0..20 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")}));
    }
    let body_text = Value::Array(ops).to_string();
    let t = std::time::Instant::now();
    let (code, st) = body(
        s.client.patch(s.ns_url("/amp")).header("content-type", "application/json-patch+json").body(body_text).send().await.unwrap(),
    )
    .await;
    assert!(code.is_client_error(), "{code} {st}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());

    let a = vec!["x"; 1000].join(",");
    let b = vec!["*a"; 100].join(",");
    let c = vec!["*b"; 1000].join(",");
    let yaml = format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: amp\n  annotations: {{}}\nx:\n  a: &a [{a}]\n  b: &b [{b}]\n  c: [{c}]\nspec:\n  image: busybox\n"
    );
    let t = std::time::Instant::now();
    let (code, st) = body(
        s.client
            .patch(s.ns_url("/amp?fieldManager=t"))
            .header("content-type", "application/apply-patch+yaml")
            .body(yaml)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 400, "{st}");
    assert!(st["message"].as_str().unwrap().contains("aliasing"), "{st}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());

    // More than 10000 operations.
    let many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/kind", "value": "Container"})).collect();
    let (code, st) = body(
        s.client
            .patch(s.ns_url("/amp"))
            .header("content-type", "application/json-patch+json")
            .body(Value::Array(many).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 413, "{st}");
}

/// kube-runtime's finalizer helper: a `test` for null at an absent path
/// succeeds; a failing `test` is 422.
#[tokio::test]
async fn kube_runtime_finalizer_patch() {
    let s = TestServer::start().await;
    create(&s, &container("f")).await;
    let send = |b: &'static str| s.client.patch(s.ns_url("/f")).header("content-type", "application/json-patch+json").body(b).send();
    let (code, v) = body(
        send(r#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["x"]}]"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["finalizers"], json!(["x"]));
    // Now present: the same test fails, with 422.
    let (code, st) = body(
        send(r#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["y"]}]"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (422, Some("Invalid")), "{st}");
    // A test for null whose parent is missing fails, as in evanphx/json-patch.
    let (code, st) = body(
        send(r#"[{"op":"test","path":"/metadata/nothere/x","value":null},{"op":"add","path":"/metadata/labels/t","value":"y"}]"#)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code.as_u16(), st["reason"].as_str()), (422, Some("Invalid")), "{st}");
    // Malformed patch documents stay 400.
    let (code, _) = body(send(r#"[{"op":"frobnicate","path":"/x"}]"#).await.unwrap()).await;
    assert_eq!(code, 400);
}

/// One merge patch removes the last finalizer and changes the labels: a
/// selector watcher that had the object gets DELETED. A deletion also
/// bumps metadata.generation.
#[tokio::test]
async fn selector_watch_gets_deleted_when_labels_change_with_the_last_finalizer() {
    let s = TestServer::start().await;
    let mut c = container("g");
    c["metadata"]["finalizers"] = json!(["x.dev/f"]);
    let created = create(&s, &c).await;
    let mut w = WatchReader::open(&s, &format!("labelSelector=app%3Dweb&resourceVersion={}", rv(&created))).await;
    let (code, d) = body(s.client.delete(s.ns_url("/g")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(d["metadata"]["generation"], 2, "deletionTimestamp bumps generation: {d}");
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "MODIFIED");
    let (code, _) = body(
        s.client
            .patch(s.ns_url("/g"))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"metadata":{"finalizers":null,"labels":{"app":"gone"}}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    let e = w.next().await.unwrap();
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("DELETED"), Some("g")), "{e}");
    // Resumed from the revision before the delete, the replay says the same.
    let mut again = WatchReader::open(&s, &format!("labelSelector=app%3Dweb&resourceVersion={}", rv(&created))).await;
    assert_eq!(again.next().await.unwrap()["type"], "MODIFIED");
    assert_eq!(again.next().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn since_seconds_overflow_is_400() {
    let s = TestServer::start().await;
    create(&s, &container("l")).await;
    let (code, st) = body(s.client.get(s.ns_url("/l/log?sinceSeconds=9223372036854775807")).send().await.unwrap()).await;
    assert_eq!(code, 400, "{st}");
    assert!(st["message"].as_str().unwrap().contains("sinceSeconds"), "{st}");
}

/// 300 connections that never finish their headers do not starve a normal
/// request, and are closed after the header read timeout.
#[tokio::test]
async fn stalled_connections_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = steward_apiserver::Config { header_read_timeout: Duration::from_secs(1), ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stalled.push(c);
    }
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), s.client.get(s.ns_url("")).send()).await.expect("starved").unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    // Every stalled connection is closed by the server (EOF or reset).
    for mut c in stalled {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled connection was kept open");
    }
}

/// Over the in-flight bound, a request gets 429 with Retry-After at once;
/// watches are counted apart and do not take ordinary requests' slots.
#[tokio::test]
async fn inflight_requests_are_bounded() {
    let api = steward_apiserver::Config { max_requests_inflight: 1, max_long_running_inflight: 1, ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    // A watch holds the one long-running slot; ordinary requests still work.
    let _w = WatchReader::open(&s, "").await;
    let (code, _) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    let r = s.client.get(s.ns_url("?watch=true")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    // Percent-encoding does not make a watch pass as a short request.
    let r = s.client.get(s.ns_url("?watch=%74rue")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    // A create whose body never finishes holds the one ordinary slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tx.send(Ok(bytes::Bytes::from_static(b"{"))).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow = tokio::spawn({
        let c = s.client.clone();
        let url = s.ns_url("");
        async move {
            c.post(url).header("content-type", "application/json").body(reqwest::Body::wrap_stream(stream)).send().await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = s.client.get(s.ns_url("")).send().await.unwrap();
        if r.status() == 429 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // Probes are never shed.
    assert_eq!(s.client.get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200);
    drop(tx);
    let _ = slow.await;
    let (code, _) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
    assert_eq!(code, 200);
}

/// A JSON patch that keeps the object at the size cap (add, remove, add,
/// ...) is refused after a bounded amount of re-measuring, not allowed to
/// cost a whole-object serialisation per operation.
#[tokio::test]
async fn patches_hovering_at_the_size_cap_are_bounded() {
    let s = TestServer::start().await;
    let mut c = container("cap");
    c["spec"]["args"] = json!(["x".repeat(steward_store::MAX_OBJECT_BYTES - 2000)]);
    create(&s, &c).await;
    let mut ops = Vec::new();
    for _ in 0..5000 {
        ops.push(json!({"op": "add", "path": "/metadata/labels/k", "value": "v".repeat(60)}));
        ops.push(json!({"op": "remove", "path": "/metadata/labels/k"}));
    }
    let t = std::time::Instant::now();
    let (code, st) = body(
        s.client
            .patch(s.ns_url("/cap"))
            .header("content-type", "application/json-patch+json")
            .body(Value::Array(ops).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 413, "{st}");
    assert!(st["message"].as_str().unwrap().contains("near the limit"), "{st}");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

/// The header read timeout also closes idle keep-alive connections (as an
/// idle timeout); a client's next request on its pool then goes through.
#[tokio::test]
async fn idle_keep_alive_connections_closed_by_the_timeout_are_harmless() {
    let api = steward_apiserver::Config { header_read_timeout: Duration::from_millis(300), ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    for _ in 0..3 {
        let (code, _) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
        assert_eq!(code, 200);
        // Idle for longer than the timeout: the server closes the connection.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test]
async fn readyz_reports_a_dependency_that_is_not_ready() {
    let (tx, rx) = tokio::sync::watch::channel(None::<String>);
    let cfg = steward_apiserver::Config { not_ready: Some(rx), ..Default::default() };
    let s = TestServer::start_with(|_| {}, cfg).await;
    let get = || s.client.get(format!("{}/readyz", s.url)).send();
    assert_eq!(get().await.unwrap().status(), 200);
    tx.send(Some("containerd at /x.sock: deadline exceeded".into())).unwrap();
    let r = get().await.unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("containerd at /x.sock: deadline exceeded"), "{text}");
    // Liveness is not readiness: the server itself is fine.
    assert_eq!(s.client.get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200);
    tx.send(None).unwrap();
    assert_eq!(get().await.unwrap().status(), 200);
}

/// Deeply nested YAML (libyaml's time grows with the square of the depth)
/// and YAML of millions of tiny nodes (memory ~100x the text) are refused
/// with 400 before parsing; health probes stay responsive meanwhile.
#[tokio::test]
async fn expensive_yaml_bodies_are_refused_before_parsing() {
    let s = TestServer::start().await;
    let post = |text: String| {
        s.client.post(s.ns_url("")).header("content-type", "application/yaml").body(text).send()
    };
    let deep = format!("{}x{}", "{a: ".repeat(20_000), "}".repeat(20_000));
    let many = format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata: {{name: m}}\nspec:\n  image: busybox\n  args: [{}]\n",
        vec!["a"; 1_000_000].join(",")
    );
    for (text, what) in [(deep, "nests more than 100 levels"), (many, "more than 100000 nodes")] {
        let t = std::time::Instant::now();
        let (code, st) = body(post(text).await.unwrap()).await;
        assert_eq!(code, 400, "{st}");
        assert!(st["message"].as_str().unwrap().contains(what), "{st}");
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    }
    let r = tokio::time::timeout(Duration::from_secs(2), s.client.get(format!("{}/healthz", s.url)).send()).await;
    assert_eq!(r.expect("healthz stalled").unwrap().status(), 200);
}

/// An object created within a few bytes of the size cap can still get the
/// controller's finalizer, a status, be deleted, and have its finalizer
/// removed (kube-runtime's JSON patch): none of these fail on the cap.
#[tokio::test]
async fn an_object_at_the_size_cap_can_be_finalized_and_deleted() {
    let s = TestServer::start().await;
    let mut c = container("cap");
    c["spec"]["args"] = json!(["x"]);
    let small = create(&s, &c).await;
    let len = small.to_string().len();
    let mut big = small.clone();
    big["spec"]["args"] = json!(["x".repeat(1 + steward_store::MAX_OBJECT_BYTES - len - 10)]);
    let (code, v) = body(s.client.put(s.ns_url("/cap")).json(&big).send().await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    let stored = s.client.get(s.ns_url("/cap")).send().await.unwrap().bytes().await.unwrap().len();
    assert!(stored <= steward_store::MAX_OBJECT_BYTES && stored + 43 > steward_store::MAX_OBJECT_BYTES, "{stored}");
    let json_patch = |ops: Value| {
        s.client.patch(s.ns_url("/cap")).header("content-type", "application/json-patch+json").body(ops.to_string()).send()
    };
    // The controller's finalizer add.
    let (code, v) = body(
        json_patch(json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                          {"op": "add", "path": "/metadata/finalizers", "value": ["steward.dev/containerd"]}]))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let mut st = v.clone();
    st["status"] = json!({"phase": "Running", "restartCount": 1});
    let (code, v) = body(s.client.put(s.ns_url("/cap/status")).json(&st).send().await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    // A client's growth is still refused.
    let (code, v) = body(json_patch(json!([{"op": "add", "path": "/metadata/labels/more", "value": "y"}])).await.unwrap()).await;
    assert_eq!(code, 413, "{v}");
    let (code, v) = body(s.client.delete(s.ns_url("/cap")).send().await.unwrap()).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (code, v) = body(
        json_patch(json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "steward.dev/containerd"},
                          {"op": "remove", "path": "/metadata/finalizers/0"}]))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = body(s.client.get(s.ns_url("/cap")).send().await.unwrap()).await;
    assert_eq!(code, 404);
}

/// A continue token or watch resourceVersion newer than the store's
/// revision (never issued by it) is refused at once: 400 for the token,
/// 504 with Retry-After for the watch (kube-apiserver's "Too large
/// resource version"), instead of answering at revision 10^18 or hanging.
#[tokio::test]
async fn future_revisions_are_refused() {
    use base64::Engine;
    let s = TestServer::start().await;
    for n in ["a", "b", "c"] {
        create(&s, &container(n)).await;
    }
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"rv": 1_000_000_000_000_000_000i64, "ns": "default", "name": "a"})).unwrap());
    let (code, st) = body(s.client.get(s.ns_url(&format!("?limit=1&continue={forged}"))).send().await.unwrap()).await;
    assert_eq!(code, 400, "{st}");
    assert!(st["message"].as_str().unwrap().contains("continue"), "{st}");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        s.client.get(s.ns_url("?watch=true&resourceVersion=1000000000000000000")).send(),
    )
    .await
    .expect("the watch hung")
    .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["retry-after"], "1");
    let (_, st) = body(r).await;
    assert!(st["message"].as_str().unwrap().contains("too large resource version"), "{st}");
    // The current revision is still fine for both.
    let (_, p1) = body(s.client.get(s.ns_url("?limit=1")).send().await.unwrap()).await;
    let cont = p1["metadata"]["continue"].as_str().unwrap().to_string();
    let (code, p2) = body(s.client.get(s.ns_url(&format!("?limit=1&continue={cont}"))).send().await.unwrap()).await;
    assert_eq!(code, 200, "{p2}");
    assert_eq!(p2["metadata"]["resourceVersion"], p1["metadata"]["resourceVersion"]);
    let mut w = WatchReader::open(&s, &format!("resourceVersion={}", rv(&p1))).await;
    create(&s, &container("d")).await;
    assert_eq!(w.next().await.unwrap()["object"]["metadata"]["name"], "d");
}

/// Opens a POST whose body never finishes (1 byte of 100 sent).
async fn trickling_post(s: &TestServer) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = s.url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {BASE}/namespaces/default/containers HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c
}

/// Bodies that trickle in cannot hold the in-flight slots: each gets 408
/// after the body read timeout and the slots come back; and shutdown does
/// not wait on them past its deadline.
#[tokio::test]
async fn trickled_bodies_time_out_and_do_not_hold_shutdown() {
    use tokio::io::AsyncReadExt;
    let api = steward_apiserver::Config {
        max_requests_inflight: 3,
        body_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = TestServer::start_with(|_| {}, api).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(trickling_post(&s).await);
    }
    let t = std::time::Instant::now();
    for mut c in slow {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.expect("no answer").unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("not received within"), "{text}");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let (code, _) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
    assert_eq!(code, 200);

    // Shutdown with a trickling body in flight (its own timeout far away)
    // ends at the shutdown deadline.
    let api = steward_apiserver::Config {
        body_read_timeout: Duration::from_secs(600),
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let mut s = TestServer::start_with(|_| {}, api).await;
    let mut c = trickling_post(&s).await;
    // A normal request is served meanwhile.
    let (code, _) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    let t = std::time::Instant::now();
    s.stop().await;
    assert!(t.elapsed() < Duration::from_secs(5), "shutdown waited {:?}", t.elapsed());
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await.expect("connection not closed");
}

/// A watcher that stops reading is dropped once the server has been unable
/// to write to it for the write timeout: its watch (and the frames queued
/// for it) are released, not held for as long as the peer likes.
#[tokio::test]
async fn stalled_watchers_are_dropped_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let api = steward_apiserver::Config { write_timeout: Duration::from_secs(1), ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut c = sock.connect(addr.parse().unwrap()).await.unwrap();
    c.write_all(format!("GET {BASE}/namespaces/default/containers?watch=true HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.store.watchers() == 0 {
        assert!(std::time::Instant::now() < deadline, "the watch never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ~16 MB of events, more than the socket buffers hold: never read.
    for i in 0..16 {
        let mut o = container(&format!("big{i}"));
        o["spec"]["args"] = json!(["x".repeat(1 << 20)]);
        create(&s, &o).await;
    }
    // (A dropped watch leaves the store's list at its next write.)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while s.store.watchers() > 0 {
        assert!(std::time::Instant::now() < deadline, "the stalled watcher was kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
        create(&s, &container(&format!("small{n}"))).await;
    }
    drop(c);
}

/// With a token configured, an unauthenticated flood gets 401 and takes no
/// in-flight slot: authentication runs before the limiter.
#[tokio::test]
async fn unauthenticated_requests_get_401_not_429() {
    let api = steward_apiserver::Config { token: Some("s3cret".into()), max_requests_inflight: 1, ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    // An authenticated create whose body never finishes holds the one slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tx.send(Ok(bytes::Bytes::from_static(b"{"))).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let slow = tokio::spawn({
        let c = s.client.clone();
        let url = s.ns_url("");
        async move {
            c.post(url)
                .bearer_auth("s3cret")
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.client.get(s.ns_url("")).bearer_auth("s3cret").send().await.unwrap();
        if r.status() == 429 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let (code, st) = body(s.client.get(s.ns_url("")).send().await.unwrap()).await;
        assert_eq!((code.as_u16(), st["reason"].as_str()), (401, Some("Unauthorized")), "{st}");
    }
    drop(tx);
    let _ = slow.await;
}

/// `move` operations relocate bytes without adding them: many moves of a
/// large value on an object near the cap are not refused as growth.
#[tokio::test]
async fn json_patch_moves_are_not_counted_as_growth() {
    let s = TestServer::start().await;
    let mut c = container("mv");
    c["spec"]["args"] = json!(["x".repeat(steward_store::MAX_OBJECT_BYTES - 250_000)]);
    c["metadata"]["annotations"] = json!({"a": "y".repeat(200_000)});
    create(&s, &c).await;
    let ops: Vec<Value> = (0..200)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
            json!({"op": "move", "from": format!("/metadata/annotations/{from}"), "path": format!("/metadata/annotations/{to}")})
        })
        .collect();
    let (code, v) = body(
        s.client
            .patch(s.ns_url("/mv"))
            .header("content-type", "application/json-patch+json")
            .body(Value::Array(ops).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["annotations"]["a"].as_str().map(str::len), Some(200_000));
}

struct NoImages;

impl steward_apiserver::ImageImporter for NoImages {
    fn import<'a>(&'a self, _: &'a std::path::Path) -> futures_util::future::BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Ok(vec!["never reached".to_string()]) })
    }
    fn list(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<steward_apiserver::ImageInfo>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn remove<'a>(&'a self, _: &'a str) -> futures_util::future::BoxFuture<'a, Result<Vec<String>, steward_apiserver::RemoveError>> {
        Box::pin(async { Err(steward_apiserver::RemoveError::NotFound) })
    }
    fn pull<'a>(&'a self, _: &'a str) -> futures_util::future::BoxFuture<'a, Result<String, String>> {
        Box::pin(async { Err("no registry".to_string()) })
    }
}

/// An image archive upload that stalls is refused with 408 once nothing
/// arrived for the body read timeout (an archive may take long, but not
/// stall), and the partial upload is not kept.
#[tokio::test]
async fn a_stalled_image_upload_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uploads = tempfile::tempdir().unwrap();
    let api = steward_apiserver::Config {
        body_read_timeout: Duration::from_secs(1),
        images: Some(std::sync::Arc::new(NoImages)),
        upload_dir: Some(uploads.path().to_path_buf()),
        ..Default::default()
    };
    let s = TestServer::start_with(|_| {}, api).await;
    let addr = s.url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {BASE}/images/import HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let t = std::time::Instant::now();
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut got)).await.expect("no answer").unwrap();
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("stalled"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(std::fs::read_dir(uploads.path()).unwrap().count(), 0, "the partial upload is removed");
}

/// Logs of a container that never ran (created, then a create error) are a
/// 400 saying why, as kube-apiserver's "is waiting to start", not an empty
/// body or a follow that ends at once.
#[tokio::test]
async fn logs_of_a_container_that_never_ran_say_it_waits() {
    let logs = tempfile::tempdir().unwrap();
    let api = steward_apiserver::Config { logs_dir: Some(logs.path().to_path_buf()), ..Default::default() };
    let s = TestServer::start_with(|_| {}, api).await;
    create(&s, &container("w")).await;
    let status = json!({"status": {"containerID": "containerd://default.w.0123456789ab",
        "state": {"waiting": {"reason": "CreateContainerError", "message": "exec: \"x\": not found"}}}});
    let (code, st) = body(
        s.client
            .patch(s.ns_url("/w/status"))
            .header("content-type", "application/merge-patch+json")
            .body(status.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{st}");
    for q in ["", "?follow=true"] {
        let (code, st) = body(s.client.get(s.ns_url(&format!("/w/log{q}"))).send().await.unwrap()).await;
        assert_eq!(code, 400, "{q}: {st}");
        assert_eq!(st["message"], "container \"w\" is waiting to start: CreateContainerError", "{st}");
    }
    // Before any container exists (a pull): the same.
    create(&s, &container("p")).await;
    let status = json!({"status": {"state": {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}}});
    let r = s.client.patch(s.ns_url("/p/status")).header("content-type", "application/merge-patch+json").body(status.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (code, st) = body(s.client.get(s.ns_url("/p/log?follow=true")).send().await.unwrap()).await;
    assert_eq!((code.as_u16(), st["message"].as_str()), (400, Some("container \"p\" is waiting to start: ErrImagePull")), "{st}");
}

/// `kubectl get` asks for a `meta.k8s.io/v1` Table: it gets `steward get`'s
/// columns (wide ones at priority 1) for list, get and watch, and the real
/// kubectl prints them.
#[tokio::test]
async fn tables_for_kubectl_get() {
    let mut s = TestServer::start().await;
    create(&s, &container("web")).await;
    create(&s, &container("db")).await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let r = s.client.get(s.ns_url("")).header("Accept", accept).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json;as=Table;v=v1;g=meta.k8s.io");
    let (code, t) = body(r).await;
    assert_eq!((code, t["kind"].as_str(), t["apiVersion"].as_str()), (StatusCode::OK, Some("Table"), Some("meta.k8s.io/v1")));
    let cols: Vec<&str> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cols, ["Name", "Ready", "Status", "Restarts", "Age", "Image", "Container-ID", "PID", "IP"]);
    let names: Vec<&str> = t["rows"].as_array().unwrap().iter().map(|r| r["cells"][0].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["cells"][2], "Pending");
    assert_eq!(t["rows"][0]["cells"][3], 0);
    // One object; plain JSON without the Table Accept.
    let (_, one) = body(s.client.get(s.ns_url("/web")).header("Accept", accept).send().await.unwrap()).await;
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    let (_, plain) = body(s.client.get(s.ns_url("/web")).send().await.unwrap()).await;
    assert_eq!(plain["kind"], "Container");
    // A watch: one-row Tables, the columns in the first event only.
    let mut w = s.client.get(format!("{}?watch=true", s.ns_url(""))).header("Accept", accept).send().await.unwrap().bytes_stream();
    let mut text = String::new();
    while text.lines().count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("watch events").unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert_eq!(events[0]["object"]["columnDefinitions"].as_array().map(Vec::len), Some(9));
    assert_eq!(events[1]["object"]["columnDefinitions"].as_array().map(Vec::len), Some(0));
    assert_eq!(events[1]["object"]["rows"][0]["cells"][0], "web");

    // The machine's kubectl prints them.
    let kubectl = Kubectl::new(&s);
    let run = |args: &'static [&'static str]| kubectl.run(args);
    let out = run(&["get", "containers"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{out}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.iter().map(|r| r[..4].to_vec()).collect::<Vec<_>>(), [vec!["db", "0/1", "Pending", "0"], vec!["web", "0/1", "Pending", "0"]], "{out}");
    // `kubectl explain` walks the OpenAPI v3 document's components.
    let explained = run(&["explain", "containers.spec.resources"]).await;
    assert!(explained.contains("FIELD: resources") && explained.contains("Resource limits") && explained.contains("limits\t<Limits>"), "{explained}");
    let explained = run(&["explain", "containers.spec.readinessProbe.httpGet"]).await;
    assert!(explained.contains("path\t<string>") && explained.contains("`/` by default."), "{explained}");
    let wide = run(&["get", "containers", "-o", "wide"]).await;
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IMAGE", "CONTAINER-ID", "PID", "IP"], "{wide}");
    assert!(wide.contains("127.0.0.1:5000/busybox:1.36"), "{wide}");
    s.stop().await;
}

/// What the official Python client sends: a custom-object create without
/// a Content-Type is read as JSON when the server takes tokens (a
/// token-less server keeps refusing it, see above); `/version/` answers.
#[tokio::test]
async fn an_authenticated_create_without_a_content_type_is_json() {
    let api = steward_apiserver::Config { token: Some("s3cret".into()), ..Default::default() };
    let mut s = TestServer::start_with(|_| {}, api).await;
    let body = serde_json::to_vec(&container("py")).unwrap();
    let r = s.client.post(s.ns_url("")).bearer_auth("s3cret").body(body.clone()).send().await.unwrap();
    let (code, v) = body_of(r).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["metadata"]["name"], "py");
    // Without the token it is still 401, whatever the body.
    let r = s.client.post(s.ns_url("")).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for path in ["/version", "/version/"] {
        let (code, v) = body_of(s.client.get(format!("{}{path}", s.url)).send().await.unwrap()).await;
        assert_eq!((code, v["major"].as_str()), (StatusCode::OK, Some("1")), "{path}");
    }
    s.stop().await;
}


fn event(name: &str, object: &str, uid: &str, reason: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "name": object, "namespace": "default", "uid": uid},
        "reason": reason, "message": format!("{reason} for {object}"), "type": "Normal",
        "source": {"component": "test"},
    })
}

/// Events are a kind of their own through the generic registry: create,
/// get, list, field selectors on involvedObject, patch, watch, table,
/// discovery, expiry, and what kubectl does with them.
#[tokio::test]
async fn events_are_served_selected_expired_and_described() {
    let mut s = TestServer::start().await;
    let events = format!("{}/api/v1/namespaces/default/events", s.url);
    let web = create(&s, &container("web")).await;
    let uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    for (name, obj, uid, reason) in [("web.1", "web", uid.as_str(), "Pulled"), ("web.2", "web", uid.as_str(), "Started"), ("db.1", "db", "other", "Pulled")] {
        let (code, v) = body(s.client.post(&events).json(&event(name, obj, uid, reason)).send().await.unwrap()).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        assert_eq!((v["count"].as_i64(), v["involvedObject"]["name"].as_str()), (Some(1), Some(obj)), "defaults, fields at the top: {v}");
        assert!(v["firstTimestamp"].is_string() && v["lastTimestamp"].is_string() && v.get("spec").is_none(), "{v}");
    }
    // Bad ones name their field.
    let mut bad = event("bad.1", "web", &uid, "X");
    bad["source"] = json!({});
    bad["type"] = json!("Odd");
    let (code, st) = body(s.client.post(&events).json(&bad).send().await.unwrap()).await;
    assert_eq!(code.as_u16(), 422, "{st}");
    let fields: Vec<&str> = st["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["type", "source.component"]);
    // generateName.
    let mut gen = event("", "web", &uid, "Gen");
    gen["metadata"] = json!({"generateName": "web."});
    let (code, v) = body(s.client.post(&events).json(&gen).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert!(v["metadata"]["name"].as_str().unwrap().starts_with("web.") && v["metadata"]["name"].as_str().unwrap().len() == 9, "{v}");

    // Field selectors as `kubectl describe` sends them.
    let sel = format!("involvedObject.kind=Container,involvedObject.uid={uid},involvedObject.name=web,involvedObject.namespace=default");
    let (_, list) = body(s.client.get(&events).query(&[("fieldSelector", sel.as_str())]).send().await.unwrap()).await;
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");
    let (code, st) = body(s.client.get(&events).query(&[("fieldSelector", "spec.image=x")]).send().await.unwrap()).await;
    assert_eq!(code.as_u16(), 400, "{st}");
    // Across namespaces.
    let (_, all) = body(s.client.get(format!("{}/api/v1/events", s.url)).send().await.unwrap()).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    // A repeat raises the count with a merge patch.
    let (code, v) = body(
        s.client.patch(format!("{events}/web.1")).header("content-type", "application/merge-patch+json").body(r#"{"count":2}"#).send().await.unwrap(),
    )
    .await;
    assert_eq!((code, v["count"].as_i64()), (StatusCode::OK, Some(2)), "{v}");

    // Discovery: the core group lists events, plain and aggregated.
    let (_, v1) = body(s.client.get(format!("{}/api/v1", s.url)).send().await.unwrap()).await;
    assert_eq!(v1["resources"][0]["name"], "events");
    let r = s
        .client
        .get(format!("{}/apis", s.url))
        .header("Accept", "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList");
    let (_, agg) = body(r).await;
    assert_eq!(agg["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    assert_eq!(agg["items"][0]["versions"][0]["resources"][0]["resource"], "containers");

    // The machine's kubectl: `get events`, and `describe` showing them.
    let kubectl = Kubectl::new(&s);
    let run = |args: &'static [&'static str]| kubectl.run(args);
    let out = run(&["get", "events"]).await;
    assert!(out.starts_with("LAST SEEN") && out.contains("container/web") && out.contains("Started for web"), "{out}");
    let out = run(&["describe", "container", "web"]).await;
    let tail = out.split("Events:").nth(1).unwrap_or_else(|| panic!("no Events section:\n{out}"));
    assert!(tail.contains("Pulled") && tail.contains("Started") && !tail.contains("db"), "{out}");
    let out = run(&["api-resources"]).await;
    assert!(out.contains("events") && out.contains("containers"), "{out}");

    // Expiry: last seen more than the TTL ago, or beyond the bound.
    let mut old = event("web.old", "web", &uid, "Old");
    old["lastTimestamp"] = json!((chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
    old["firstTimestamp"] = old["lastTimestamp"].clone();
    let (code, _) = body(s.client.post(&events).json(&old).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::CREATED);
    let r = steward_apiserver::events::Retention { ttl: Duration::from_secs(3600), max: 3, every: Duration::from_secs(60) };
    let removed = steward_apiserver::events::expire_once(&s.store, r, chrono::Utc::now()).await;
    assert_eq!(removed, 2, "the expired one and the oldest beyond 3");
    let (_, all) = body(s.client.get(format!("{}/api/v1/events", s.url)).send().await.unwrap()).await;
    let left: Vec<&str> = all["items"].as_array().unwrap().iter().map(|e| e["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&"web.old"), "{left:?}");
    s.stop().await;
}

/// Server-side apply tracks who set which field: a second manager's
/// different value is a 409 naming the field and the manager, unless
/// forced; fields a manager stops applying go, others' stay; an update's
/// fields are its own; fieldValidation Warn and Ignore drop unknown fields.
#[tokio::test]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let mut s = TestServer::start().await;
    let apply = |manager: &'static str, force: bool, body: Value| {
        let req = s
            .client
            .patch(s.ns_url(&format!("/web?fieldManager={manager}&force={force}")))
            .header("content-type", "application/apply-patch+yaml")
            .body(body.to_string());
        async move { body_of(req.send().await.unwrap()).await }
    };
    async fn body_of(r: Response) -> (StatusCode, Value) {
        body(r).await
    }
    let manifest = |image: &str, extra: Value| {
        let mut m = json!({"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "metadata": {"name": "web", "labels": {"app": "web"}},
                           "spec": {"image": image}});
        if let Value::Object(e) = extra {
            for (k, v) in e {
                m["spec"][k] = v;
            }
        }
        m
    };
    let (code, v) = apply("alice", false, manifest("busybox:1", json!({"args": ["sleep", "1"]}))).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mf = &v["metadata"]["managedFields"][0];
    assert_eq!((mf["manager"].as_str(), mf["operation"].as_str(), mf["fieldsType"].as_str()), (Some("alice"), Some("Apply"), Some("FieldsV1")));
    assert_eq!(mf["fieldsV1"]["f:spec"]["f:image"], json!({}));
    assert_eq!(mf["fieldsV1"]["f:metadata"]["f:labels"]["f:app"], json!({}));
    // Apply needs a manager.
    let r = s.client.patch(s.ns_url("/web")).header("content-type", "application/apply-patch+yaml").body("{}").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Bob's other image: 409 naming the field and alice.
    let (code, st) = apply("bob", false, json!({"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "metadata": {"name": "web"}, "spec": {"image": "busybox:2"}})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{st}");
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(st["message"], "Apply failed with 1 conflict: conflict with \"alice\" using steward.dev/v1alpha1: .spec.image");
    assert_eq!(st["details"]["causes"][0]["field"], ".spec.image");
    // The same value is no conflict; forced, bob takes the image.
    let (code, _) = apply("bob", false, json!({"metadata": {"name": "web"}, "spec": {"image": "busybox:1"}})).await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = apply("bob", true, json!({"metadata": {"name": "web"}, "spec": {"image": "busybox:2"}})).await;
    assert_eq!((code, v["spec"]["image"].as_str()), (StatusCode::OK, Some("busybox:2")), "{v}");
    let managers: Vec<(String, Value)> = v["metadata"]["managedFields"].as_array().unwrap().iter()
        .map(|e| (e["manager"].as_str().unwrap().to_string(), e["fieldsV1"].clone())).collect();
    let alice = &managers.iter().find(|(m, _)| m == "alice").unwrap().1;
    assert!(alice["f:spec"].get("f:image").is_none() && alice["f:spec"]["f:args"] == json!({}), "{alice}");

    // A label added by an update (kubectl label) is that manager's, and
    // survives alice's next apply; args alice no longer applies go.
    let r = s.client.patch(s.ns_url("/web?fieldManager=kubectl-label")).header("content-type", "application/merge-patch+json")
        .body(r#"{"metadata":{"labels":{"tier":"front"}}}"#).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (code, v) = apply("alice", false, json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"image": "busybox:2"}})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["labels"], json!({"app": "web", "tier": "front"}));
    assert!(v["spec"].get("args").is_none(), "alice's dropped args stayed: {v}");
    // Applying the same again writes nothing.
    let rv_before = v["metadata"]["resourceVersion"].clone();
    let r = s.client.patch(s.ns_url("/web?fieldManager=alice")).header("content-type", "application/apply-patch+yaml")
        .body(json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"image": "busybox:2"}}).to_string()).send().await.unwrap();
    assert_eq!(r.headers()["x-steward-apply"], "unchanged");
    let (_, v) = body(r).await;
    assert_eq!(v["metadata"]["resourceVersion"], rv_before);

    // fieldValidation: Strict refuses an unknown field, Warn drops it with
    // a warning, Ignore drops it quietly.
    let typo = json!({"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "metadata": {"name": "t"}, "spec": {"image": "busybox", "imagee": "x"}});
    let post = |q: &'static str| s.client.post(format!("{}{q}", s.ns_url(""))).json(&typo).send();
    let r = post("?fieldValidation=Strict").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post("?fieldValidation=Warn").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["warning"], "299 - \"unknown field \\\"spec.imagee\\\"\"");
    let r = s.client.delete(s.ns_url("/t")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = post("?fieldValidation=Ignore").await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("warning").is_none());
    let r = post("?fieldValidation=Maybe").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

/// A token-less server takes no request a web page could make: by Origin,
/// or by a Host that is not loopback by address (DNS rebinding).
#[tokio::test]
async fn a_token_less_server_refuses_web_pages_and_foreign_hosts() {
    let mut s = TestServer::start().await;
    let get = |host: &'static str| s.client.get(s.ns_url("")).header("Host", host).send();
    for (host, code) in [("127.0.0.1:80", 200), ("localhost", 200), ("[::1]:7420", 200), ("evil.example", 403), ("127.attacker.example:80", 403)] {
        assert_eq!(get(host).await.unwrap().status().as_u16(), code, "Host {host}");
    }
    let r = s.client.get(s.ns_url("")).header("Origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Events: a name is required, and the URL's namespace must be one.
    let mut nameless = event("", "web", "u", "X");
    nameless["metadata"] = json!({});
    let r = s.client.post(format!("{}/api/v1/namespaces/default/events", s.url)).json(&nameless).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = s.client.post(format!("{}/api/v1/namespaces/BAD%20NS/events", s.url)).json(&event("e.1", "web", "u", "X")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let mut huge = event("e.2", "web", "u", "X");
    huge["series"] = json!({"note": "x".repeat(40_000)});
    let r = s.client.post(format!("{}/api/v1/namespaces/default/events", s.url)).json(&huge).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    s.stop().await;
}

/// The machine's kubectl against a token-less test server, through a
/// kubeconfig of its own.
struct Kubectl {
    bin: &'static str,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(s: &TestServer) -> Kubectl {
        let bin = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"].into_iter().find(|p| std::path::Path::new(p).exists());
        let bin = bin.expect("kubectl is needed: install kubectl 1.32 (it is on every machine of this kind)");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("config");
        std::fs::write(&kubeconfig, format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: s, cluster: {{server: \"{}\"}}}}]\ncontexts: [{{name: s, context: {{cluster: s, namespace: default}}}}]\ncurrent-context: s\nusers: []\n",
            s.url
        )).unwrap();
        Kubectl { bin, kubeconfig, _dir: dir }
    }

    /// Runs kubectl, which must succeed without a discovery complaint; its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new(self.bin)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .args(args)
            .output()
            .await
            .expect("run kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?}: {err}");
        assert!(!err.contains("unable to retrieve"), "kubectl {args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Review: a second applier of an equal value is recorded (so the first
/// cannot remove it alone); a Container's kind is checked, not
/// overwritten; a long generateName is cut to fit.
#[tokio::test]
async fn equal_applies_are_recorded_kinds_checked_and_generated_names_fit() {
    let mut s = TestServer::start().await;
    let apply = |manager: &'static str, labels: Value| {
        let mut doc = json!({"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "metadata": {"name": "a1"}, "spec": {"image": "busybox"}});
        if !labels.is_null() {
            doc["metadata"]["labels"] = labels;
        }
        let req = s.client.patch(s.ns_url(&format!("/a1?fieldManager={manager}"))).header("content-type", "application/apply-patch+yaml").body(doc.to_string());
        async move { body(req.send().await.unwrap()).await }
    };
    let (code, _) = apply("m3", json!({"x": "y"})).await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, v) = apply("m7", json!({"x": "y"})).await;
    assert_eq!(code, StatusCode::OK);
    let managers: Vec<&str> = v["metadata"]["managedFields"].as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert!(managers.contains(&"m7"), "{managers:?}");
    let (_, v) = apply("m3", Value::Null).await;
    assert_eq!(v["metadata"]["labels"], json!({"x": "y"}), "m7 still declares it: {v}");
    // A Pod is not a Container.
    let mut pod = container("p");
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    let (code, st) = body(s.client.post(s.ns_url("")).json(&pod).send().await.unwrap()).await;
    assert_eq!(code.as_u16(), 422, "{st}");
    // generateName longer than a name may be: cut, then suffixed.
    let mut ev = event("", "web", "u", "X");
    ev["metadata"] = json!({"generateName": "g".repeat(250)});
    let (code, v) = body(s.client.post(format!("{}/api/v1/namespaces/default/events", s.url)).json(&ev).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["metadata"]["name"].as_str().unwrap().len(), 63);
    s.stop().await;
}
