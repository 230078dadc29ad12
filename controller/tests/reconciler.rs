//! The Container reconciler and the controller runtime against the real API
//! server (real SQLite store, real HTTP), with an in-memory fake runtime in
//! place of containerd: the whole loop from apply to status, restarts,
//! spec changes, deletion through the finalizer, and garbage collection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};
use steward_controller::actual::*;
use steward_controller::client::Api;
use steward_controller::container::gc::Collector;
use steward_controller::container::pulls::Pulls;
use steward_controller::container::reconciler::{object_of, reconcile, Context, FINALIZER};
use steward_controller::runtime::controller::{Config, Controller};
use steward_schema::{Container, ContainerSpec, PullPolicy, Time};
use tokio::sync::broadcast;

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, ActualContainer>,
    next_pid: u32,
    /// Commands whose processes exit at once with this code.
    exit_codes: BTreeMap<String, u32>,
    log: Vec<String>,
    /// Objects with log directories (namespace, name, uid): one appears
    /// when a task of theirs starts.
    logs: Vec<LogOwner>,
}

struct Fake {
    s: Mutex<FakeState>,
    events: broadcast::Sender<String>,
    /// Pulls (ensure_image with a policy that may pull) per image.
    pulls: Mutex<BTreeMap<String, u32>>,
    /// Pulls of "gated" images wait for this to be true.
    gate: tokio::sync::watch::Receiver<bool>,
    open_gate: tokio::sync::watch::Sender<bool>,
}

impl Fake {
    fn new() -> Arc<Self> {
        let (open_gate, gate) = tokio::sync::watch::channel(false);
        Arc::new(Fake {
            s: Mutex::new(FakeState { next_pid: 100, ..Default::default() }),
            events: broadcast::channel(1024).0,
            pulls: Mutex::default(),
            gate,
            open_gate,
        })
    }
    fn exit(&self, id: &str, code: u32) {
        let mut s = self.s.lock().unwrap();
        if let Some(t) = s.containers.get_mut(id).and_then(|c| c.task.as_mut()) {
            t.status = TaskStatus::Stopped;
            t.exit_code = Some(code);
            t.exited_at = Some(Time::now());
        }
        drop(s);
        let _ = self.events.send(id.to_string());
    }
    fn ids(&self) -> Vec<String> {
        self.s.lock().unwrap().containers.keys().cloned().collect()
    }
    fn task(&self, id: &str) -> Option<Task> {
        self.s.lock().unwrap().containers.get(id).and_then(|c| c.task.clone())
    }
}

fn ok<T: Send + 'static>(v: T) -> BoxFuture<'static, Result<T, RuntimeError>> {
    Box::pin(async move { Ok(v) })
}

impl Runtime for Fake {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ActualContainer>, RuntimeError>> {
        ok(self.s.lock().unwrap().containers.values().cloned().collect())
    }
    fn find<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<ActualContainer>, RuntimeError>> {
        // As containerd's label filter: a container without the label never matches.
        ok(self.s.lock().unwrap().containers.values().filter(|c| c.labels.get(LABEL_UID).is_some_and(|u| u == uid)).cloned().collect())
    }
    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        policy: PullPolicy,
        progress: Box<dyn Fn(PullProgress) + Send + Sync + 'a>,
    ) -> BoxFuture<'a, Result<ImageConfig, RuntimeError>> {
        Box::pin(async move {
            // Images named "slow", "gated" or "missing" are not present
            // locally; the others are.
            let remote = ["slow", "gated", "missing"].iter().any(|w| image.contains(w));
            if policy == PullPolicy::Never {
                if remote {
                    return Err(RuntimeError::ImageNeverPull(format!("image {image} is not present")));
                }
                return Ok(ImageConfig { digest: "sha256:feed".into(), cmd: vec!["sh".into()], ..Default::default() });
            }
            *self.pulls.lock().unwrap().entry(image.to_string()).or_default() += 1;
            if image.contains("gated") {
                // Held until the test opens the gate.
                let _ = self.gate.clone().wait_for(|open| *open).await;
            }
            if image.contains("missing") {
                return Err(RuntimeError::ImagePull(format!("pull {image}: manifest unknown")));
            }
            progress(PullProgress { done: 5 << 20, total: 10 << 20 });
            if image.contains("slow") {
                // A pull that takes a while: its progress is in status meanwhile.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Ok(ImageConfig { digest: "sha256:feed".into(), cmd: vec!["sh".into()], ..Default::default() })
        })
    }
    fn create<'a>(
        &'a self,
        id: &'a str,
        spec: &'a ContainerSpec,
        image: &'a ImageConfig,
        labels: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        if spec.command.first().is_some_and(|c| c == "nonexistent") {
            return Box::pin(async { Err(RuntimeError::Create("exec: \"nonexistent\": executable file not found in $PATH".into())) });
        }
        s.log.push(format!("create {id}"));
        if let Some(code) = spec.args.first().and_then(|a| a.strip_prefix("exit=")).and_then(|c| c.parse().ok()) {
            s.exit_codes.insert(id.to_string(), code);
        }
        // An existing container gets its rootfs prepared again.
        s.containers.entry(id.to_string()).and_modify(|c| c.rootfs_missing = false).or_insert(ActualContainer {
            id: id.to_string(),
            labels,
            task: None,
            image_digest: Some(image.digest.clone()),
            created_at: Some(steward_schema::Time::now()),
            rootfs_missing: false,
            ip: None,
        });
        ok(())
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<u32, RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        s.next_pid += 1;
        let pid = s.next_pid;
        s.log.push(format!("start {id}"));
        let code = s.exit_codes.get(id).copied();
        let Some(c) = s.containers.get_mut(id) else {
            return Box::pin(async { Err(RuntimeError::NotFound("container".into())) });
        };
        c.task = Some(Task { pid, status: TaskStatus::Running, exit_code: None, exited_at: None, oom_killed: false });
        let owner = LogOwner {
            namespace: c.label(LABEL_NAMESPACE).to_string(),
            name: c.label(LABEL_NAME).to_string(),
            uid: c.label(LABEL_UID).to_string(),
        };
        if !s.logs.contains(&owner) {
            s.logs.push(owner);
        }
        drop(s);
        if let Some(code) = code {
            // Exits right after starting, as a crashing process would.
            self.exit(id, code);
        }
        ok(pid)
    }
    fn kill<'a>(&'a self, id: &'a str, signal: u32, _: bool) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.s.lock().unwrap().log.push(format!("kill {id} {signal}"));
        self.exit(id, 128 + signal);
        ok(())
    }
    fn mark_stopping<'a>(&'a self, id: &'a str, at: Time) -> BoxFuture<'a, Result<(), RuntimeError>> {
        if let Some(c) = self.s.lock().unwrap().containers.get_mut(id) {
            c.labels.insert(LABEL_STOP_REQUESTED.into(), serde_json::to_value(at).unwrap().as_str().unwrap().into());
        }
        ok(())
    }
    fn update_labels<'a>(&'a self, id: &'a str, labels: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        s.log.push(format!("relabel {id} {}", labels.keys().cloned().collect::<Vec<_>>().join(",")));
        if let Some(c) = s.containers.get_mut(id) {
            for (k, v) in labels {
                if v.is_empty() {
                    c.labels.remove(&k);
                } else {
                    c.labels.insert(k, v);
                }
            }
        }
        ok(())
    }
    fn resize<'a>(&'a self, id: &'a str, spec: &'a ContainerSpec, labels: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let memory = spec.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.memory.as_ref());
        if memory.is_some_and(|m| m.0 == "1Ki") {
            return Box::pin(async { Err(RuntimeError::Create("unable to set memory limit to 1024 (current usage: 4096)".into())) });
        }
        let mut s = self.s.lock().unwrap();
        s.log.push(format!("resize {id}"));
        if let Some(c) = s.containers.get_mut(id) {
            c.labels.extend(labels);
        }
        ok(())
    }
    fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        s.log.push(format!("delete-task {id}"));
        if let Some(c) = s.containers.get_mut(id) {
            c.task = None;
        }
        ok(())
    }
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        s.log.push(format!("remove {id}"));
        s.containers.remove(id);
        ok(())
    }
    fn remove_logs<'a>(&'a self, namespace: &'a str, name: &'a str, uid: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let mut s = self.s.lock().unwrap();
        s.log.push(format!("remove-logs {namespace}/{name} {uid}"));
        s.logs.retain(|o| o.uid != uid);
        ok(())
    }
    fn log_owners(&self) -> BoxFuture<'_, Result<Vec<LogOwner>, RuntimeError>> {
        ok(self.s.lock().unwrap().logs.clone())
    }
    fn events(&self) -> BoxStream<'static, String> {
        let rx = self.events.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(id) => return Some((id, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        })
        .boxed()
    }
}

struct Harness {
    url: String,
    http: reqwest::Client,
    fake: Arc<Fake>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// The store identity the harness's reconciler labels containers with.
const STORE: &str = "store-a";

const BASE: &str = "/apis/steward.dev/v1alpha1/namespaces/default/containers";

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = steward_store::Store::open(steward_store::Config::new(dir.path().join("s.db"))).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(steward_apiserver::serve(listener, store, Default::default(), std::future::pending()));
        let fake = Fake::new();
        let api: Api<Container> = Api::all(&url);
        let (pulls, pulled) = Pulls::new(fake.clone());
        let (prober, _probed) = steward_controller::container::probes::Prober::new(Arc::new(ExitZero));
        let ctx = Arc::new(Context {
            api: api.clone(),
            runtime: fake.clone(),
            store_uid: StoreUid::new(STORE).unwrap(),
            pulls,
            prober,
            events: steward_controller::events::Recorder::new(api.client().clone()),
        });
        let cfg = Config {
            error_backoff: (Duration::from_millis(50), Duration::from_millis(400)),
            concurrency: 2,
            ..Default::default()
        };
        let events = fake.events().filter_map(|id| async move { object_of(&id) });
        let ctl = Controller::new(Arc::new(api), cfg).trigger(events).trigger(pulled);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ctl.run(move |o| reconcile(o, ctx.clone()), async move {
            let _ = rx.await;
        }));
        Harness { url, http: reqwest::Client::new(), fake, stop: Some(tx), _dir: dir }
    }

    async fn apply(&self, name: &str, spec: Value) {
        let body = json!({"apiVersion": "steward.dev/v1alpha1", "kind": "Container", "metadata": {"name": name}, "spec": spec});
        let r = self
            .http
            .patch(format!("{}{BASE}/{name}?fieldManager=test", self.url))
            .header("content-type", "application/apply-patch+yaml")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    async fn get(&self, name: &str) -> Option<Value> {
        let r = self.http.get(format!("{}{BASE}/{name}", self.url)).send().await.unwrap();
        if r.status() == 404 {
            return None;
        }
        Some(r.json().await.unwrap())
    }

    /// Polls until `check` accepts the object (or its absence), with a deadline.
    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.get(name).await;
            if check(o.as_ref()) {
                return o;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {name}: {what}; last: {o:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn phase(o: Option<&Value>) -> &str {
    o.and_then(|o| o.pointer("/status/phase")).and_then(Value::as_str).unwrap_or_default()
}

fn waiting(o: Option<&Value>) -> &str {
    o.and_then(|o| o.pointer("/status/state/waiting/reason")).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_runs_spec_change_replaces_delete_cleans_up() {
    let h = Harness::start().await;
    h.apply("web", json!({"image": "busybox", "args": ["sleep", "1"]})).await;
    let o = h.wait_for("web", "Running", |o| phase(o) == "Running").await.unwrap();
    assert_eq!(o["metadata"]["finalizers"], json!([FINALIZER]));
    let id1 = o["status"]["containerID"].as_str().unwrap().trim_start_matches("containerd://").to_string();
    assert_eq!(h.fake.task(&id1).unwrap().pid, o["status"]["pid"].as_u64().unwrap() as u32);
    assert_eq!(o["status"]["conditions"][0]["status"], "True");
    assert_eq!(o["status"]["imageDigest"], "sha256:feed");
    assert_eq!(o["status"]["observedGeneration"], 1);

    // Spec change: the old container is stopped and removed, a new one runs.
    h.apply("web", json!({"image": "busybox", "args": ["sleep", "2"]})).await;
    let o = h
        .wait_for("web", "new container running", |o| {
            phase(o) == "Running" && o.unwrap()["status"]["observedGeneration"] == 2 && o.unwrap()["status"]["pid"].is_u64()
        })
        .await
        .unwrap();
    let id2 = o["status"]["containerID"].as_str().unwrap().trim_start_matches("containerd://").to_string();
    assert_ne!(id1, id2);
    assert_eq!(h.fake.ids(), std::slice::from_ref(&id2), "old container left behind");
    let log = h.fake.s.lock().unwrap().log.clone();
    let stop = log.iter().position(|l| l == &format!("kill {id1} 15")).expect("old container not signalled");
    let create = log.iter().position(|l| l == &format!("create {id2}")).unwrap();
    assert!(stop < create, "new container created before the old one was stopped: {log:?}");

    // Delete: the object goes only after the container is gone.
    let r = h.http.delete(format!("{}{BASE}/web", h.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.wait_for("web", "deleted", |o| o.is_none()).await;
    assert!(h.fake.ids().is_empty(), "container outlived its object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_follow_the_restart_policy() {
    let h = Harness::start().await;
    h.apply("job", json!({"image": "busybox", "args": ["exit=0"], "restartPolicy": "OnFailure"})).await;
    h.apply("never", json!({"image": "busybox", "args": ["exit=3"], "restartPolicy": "Never"})).await;
    h.apply("crash", json!({"image": "busybox", "args": ["exit=1"], "restartPolicy": "Always"})).await;
    let o = h.wait_for("job", "Succeeded", |o| phase(o) == "Succeeded").await.unwrap();
    assert_eq!(o["status"]["state"]["terminated"]["exitCode"], 0);
    let o = h.wait_for("never", "Failed", |o| phase(o) == "Failed").await.unwrap();
    assert_eq!(o["status"]["state"]["terminated"]["exitCode"], 3);
    // Always + exit 1: restarted once at once, then CrashLoopBackOff (10 s).
    let o = h.wait_for("crash", "CrashLoopBackOff", |o| waiting(o) == "CrashLoopBackOff").await.unwrap();
    assert_eq!(o["status"]["restartCount"], 1);
    assert_eq!(o["status"]["lastState"]["terminated"]["exitCode"], 1);
    assert!(o["status"]["state"]["waiting"]["message"].as_str().unwrap().contains("back-off 10s"));
    assert_eq!(o["status"]["phase"], "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_in_a_waiting_reason_and_others_keep_running() {
    let h = Harness::start().await;
    h.apply("nope", json!({"image": "127.0.0.1:5000/missing:1"})).await;
    h.apply("badcmd", json!({"image": "busybox", "command": ["nonexistent"]})).await;
    h.apply("fine", json!({"image": "busybox"})).await;
    h.apply("badref", json!({"image": "127.0.0.1:5000/../busybox:1"})).await;
    let o = h.wait_for("badref", "InvalidImageName", |o| waiting(o) == "InvalidImageName").await.unwrap();
    assert!(o["status"]["state"]["waiting"]["message"].as_str().unwrap().contains("bad repository"), "{o}");
    // It stays so, without a status write per retry.
    let rv = o["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.get("badref").await.unwrap()["metadata"]["resourceVersion"], rv, "status flaps");
    let o = h.wait_for("nope", "ImagePullBackOff", |o| waiting(o) == "ImagePullBackOff").await.unwrap();
    assert!(o["status"]["state"]["waiting"]["message"].as_str().unwrap().contains("manifest unknown"));
    let o = h.wait_for("badcmd", "CreateContainerError", |o| waiting(o) == "CreateContainerError").await.unwrap();
    assert!(o["status"]["state"]["waiting"]["message"].as_str().unwrap().contains("nonexistent"));
    h.wait_for("fine", "Running", |o| phase(o) == "Running").await;
    // Deleting the failed ones leaves nothing behind.
    for n in ["nope", "badcmd", "badref"] {
        h.http.delete(format!("{}{BASE}/{n}", h.url)).send().await.unwrap();
        h.wait_for(n, "deleted", |o| o.is_none()).await;
    }
    assert_eq!(h.fake.ids().len(), 1);
}

/// A pull that fails settles at ImagePullBackOff (via ErrImagePull): one
/// pull per backoff window, and no status writes while it backs off (the
/// object's resourceVersion stays put), however many triggers come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pull_settles_in_backoff_without_retrying_at_once() {
    let h = Harness::start().await;
    let image = "127.0.0.1:5000/missing:settle";
    h.apply("settle", json!({"image": image})).await;
    let o = h.wait_for("settle", "ImagePullBackOff", |o| waiting(o) == "ImagePullBackOff").await.unwrap();
    let msg = o["status"]["state"]["waiting"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("manifest unknown") && msg.contains("Back-off 10s") && msg.contains("next attempt at"), "{msg}");
    let rv = o["metadata"]["resourceVersion"].clone();
    // An observation window well inside the 10 s backoff.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let o = h.get("settle").await.unwrap();
        assert_eq!(waiting(Some(&o)), "ImagePullBackOff", "status moved off the backoff: {o:#}");
        assert_eq!(o["metadata"]["resourceVersion"], rv, "status rewritten while backing off: {o:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.fake.pulls.lock().unwrap().get(image).copied(), Some(1), "pulled again inside the backoff");
}

fn stray(id: &str, labels: &[(&str, &str)], running: bool) -> ActualContainer {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    ActualContainer {
        id: id.into(),
        labels: l,
        task: running.then_some(Task { pid: 1, status: TaskStatus::Running, exit_code: None, exited_at: None, oom_killed: false }),
        image_digest: None,
        created_at: None,
        rootfs_missing: false,
        ip: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_takes_only_this_stores_orphans_gracefully() {
    let h = Harness::start().await;
    h.apply("keep", json!({"image": "busybox", "stopSignal": "SIGINT"})).await;
    let keep = h.wait_for("keep", "Running", |o| phase(o) == "Running").await.unwrap();
    let keep_uid = keep["metadata"]["uid"].as_str().unwrap().to_string();
    let keep_id = h.fake.ids()[0].clone();
    {
        let s = h.fake.s.lock().unwrap();
        let labels = &s.containers[&keep_id].labels;
        assert_eq!(labels.get(LABEL_STORE).map(String::as_str), Some(STORE), "created with the store's identity");
        assert_eq!(labels.get(LABEL_STOP_SIGNAL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(LABEL_STOP_GRACE).map(String::as_str), Some("10"));
    }
    let ns = [(LABEL_NAMESPACE, "default")];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        ns.iter().chain(extra).copied().collect()
    };
    let strays = [
        // Another store's container whose object this store has never heard of.
        stray("default.theirs.1", &with(&[(LABEL_STORE, "store-b"), (LABEL_UID, "u-b"), (LABEL_NAME, "theirs")]), true),
        // This store's, object gone: stopped with ITS signal (SIGHUP), no grace.
        stray(
            "default.gone.1",
            &with(&[(LABEL_STORE, STORE), (LABEL_UID, "u-gone"), (LABEL_NAME, "gone"), (LABEL_STOP_SIGNAL, "1"), (LABEL_STOP_GRACE, "0")]),
            true,
        ),
        // This store's, named like a live object but of an older incarnation.
        stray("default.keep.old", &with(&[(LABEL_STORE, STORE), (LABEL_UID, "u-old"), (LABEL_NAME, "keep")]), false),
        // From a steward before store identities: its object lives here.
        stray("default.keep.legacy", &[(LABEL_NAMESPACE, "default"), (LABEL_UID, keep_uid.as_str()), (LABEL_NAME, "keep")], false),
        // From a steward before store identities, no object here: perhaps another store's.
        stray("default.legacy.1", &with(&[(LABEL_UID, "u-legacy"), (LABEL_NAME, "legacy")]), true),
    ];
    for c in strays {
        h.fake.s.lock().unwrap().containers.insert(c.id.clone(), c);
    }
    // A controller whose only job here is to load the cache.
    let ctl = Controller::<Container, _>::new(Arc::new(Api::all(&h.url)), Config::default());
    let cache = ctl.cache();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(ctl.run(|_| async { Ok::<_, String>(steward_controller::runtime::controller::Action::AwaitChange) }, async move {
        let _ = rx.await;
    }));
    cache.wait_ready().await;
    let gc = Collector { runtime: h.fake.clone(), api: Api::all(&h.url), store_uid: StoreUid::new(STORE).unwrap() };

    let mut total = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = gc.sweep(&cache).await.unwrap();
        total += r.collected;
        assert_eq!(r.unclaimed, ["default.legacy.1"]);
        if r.again_in.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "orphans not collected: {:?}", h.fake.ids());
        tokio::time::sleep(r.again_in.unwrap().min(Duration::from_millis(100))).await;
    }
    assert_eq!(total, 2);
    let mut left = h.fake.ids();
    left.sort();
    assert_eq!(left, [keep_id.as_str(), "default.keep.legacy", "default.legacy.1", "default.theirs.1"]);
    let log = h.fake.s.lock().unwrap().log.clone();
    assert!(log.contains(&"kill default.gone.1 1".to_string()), "stopped with its own signal first: {log:?}");
    assert!(!log.iter().any(|l| l.starts_with("kill default.gone.1 9")), "no SIGKILL needed: {log:?}");
    assert!(!log.iter().any(|l| l.contains("theirs") || l.contains("default.legacy.1")), "{log:?}");
    // The adopted one is only relabelled (the store label, nothing else).
    let legacy: Vec<&String> = log.iter().filter(|l| l.contains("default.keep.legacy")).collect();
    assert_eq!(legacy, ["relabel default.keep.legacy steward.dev/store"], "{log:?}");
    let adopted = h.fake.s.lock().unwrap().containers["default.keep.legacy"].labels.get(LABEL_STORE).cloned();
    assert_eq!(adopted.as_deref(), Some(STORE), "the legacy container of a live object is adopted");

    // One container checked on its own (as after its create event) with no
    // cache at all: the live GET keeps the live one and takes the stray.
    assert_eq!(gc.check(&keep_id, None).await.unwrap().collected, 0);
    let ghost = stray("default.ghost.1", &with(&[(LABEL_STORE, STORE), (LABEL_UID, "u-ghost"), (LABEL_NAME, "ghost")]), false);
    h.fake.s.lock().unwrap().containers.insert(ghost.id.clone(), ghost);
    assert_eq!(gc.check("default.ghost.1", Some(&cache)).await.unwrap().collected, 1);
    assert!(!h.fake.ids().contains(&"default.ghost.1".to_string()));
    assert!(h.fake.ids().contains(&keep_id));
    // An orphan of this store without a uid label, its task exited: the
    // task and then the container go (it is re-read by id, not by uid).
    let mut nouid = stray("default.nouid.1", &with(&[(LABEL_STORE, STORE), (LABEL_NAME, "nouid")]), true);
    if let Some(t) = nouid.task.as_mut() {
        t.status = TaskStatus::Stopped;
        t.exit_code = Some(0);
    }
    h.fake.s.lock().unwrap().containers.insert(nouid.id.clone(), nouid);
    assert_eq!(gc.check("default.nouid.1", None).await.unwrap().collected, 1);
    assert!(!h.fake.ids().contains(&"default.nouid.1".to_string()), "counted as collected but left: {:?}", h.fake.ids());
    // An orphan just created is spared until it is 2 s old: its
    // creator may be between Containers.Create and Tasks.Create, and
    // deleting the container then would orphan the task being created.
    let mut young = stray("default.young.1", &with(&[(LABEL_STORE, STORE), (LABEL_UID, "u-young"), (LABEL_NAME, "young")]), false);
    young.created_at = Some(steward_schema::Time::now());
    h.fake.s.lock().unwrap().containers.insert(young.id.clone(), young);
    let r = gc.check("default.young.1", Some(&cache)).await.unwrap();
    assert_eq!(r.collected, 0);
    assert!(r.again_in.is_some_and(|d| d <= Duration::from_secs(2)), "{r:?}");
    assert!(h.fake.ids().contains(&"default.young.1".to_string()));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(gc.check("default.young.1", Some(&cache)).await.unwrap().collected, 1);
    let _ = tx.send(());
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_in_progress_shows_bytes_in_status() {
    let h = Harness::start().await;
    h.apply("pulling", json!({"image": "127.0.0.1:5000/slow:1"})).await;
    // The first pass starts the pull; the next ones (every second) show its progress.
    let want = "pulling 127.0.0.1:5000/slow:1: 5.0 MiB of 10.0 MiB";
    h.wait_for("pulling", "ImagePulling with bytes", |o| {
        waiting(o) == "ImagePulling" && o.and_then(|o| o.pointer("/status/state/waiting/message")).and_then(Value::as_str) == Some(want)
    })
    .await;
    h.wait_for("pulling", "Running after the pull", |o| phase(o) == "Running").await;
}

fn container_of(o: &Value) -> String {
    o["status"]["containerID"].as_str().unwrap_or_default().trim_start_matches("containerd://").to_string()
}

/// Tasks lost behind steward's back (a host reboot, a dead shim): `Always`
/// and `OnFailure` restart, counted, with the exit marked unknown; `Never`
/// ends Failed and does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_tasks_follow_the_restart_policy() {
    let h = Harness::start().await;
    for (name, policy) in [("always", "Always"), ("onfailure", "OnFailure"), ("never", "Never")] {
        h.apply(name, json!({"image": "busybox", "args": ["sleep"], "restartPolicy": policy})).await;
    }
    let mut before = BTreeMap::new();
    for name in ["always", "onfailure", "never"] {
        let o = h.wait_for(name, "Running", |o| phase(o) == "Running").await.unwrap();
        before.insert(name, (container_of(&o), o["status"]["pid"].as_u64().unwrap()));
    }
    for (id, _) in before.values() {
        h.fake.s.lock().unwrap().containers.get_mut(id).unwrap().task = None;
        let _ = h.fake.events.send(id.clone());
    }
    for name in ["always", "onfailure"] {
        let (id, pid) = &before[name];
        let o = h
            .wait_for(name, "restarted after the lost task", |o| {
                phase(o) == "Running" && o.unwrap()["status"]["pid"].as_u64().is_some_and(|p| p != *pid)
            })
            .await
            .unwrap();
        assert_eq!(o["status"]["restartCount"], 1, "{name}");
        let last = &o["status"]["lastState"]["terminated"];
        assert_eq!((last["reason"].as_str(), last["exitCode"].as_i64()), (Some("ContainerStatusUnknown"), Some(137)), "{name}");
        assert_eq!(&container_of(&o), id, "{name}: same container, new task");
    }
    let o = h.wait_for("never", "Failed", |o| phase(o) == "Failed").await.unwrap();
    assert_eq!(o["status"]["state"]["terminated"]["reason"], "ContainerStatusUnknown");
    assert_eq!(o["status"]["restartCount"], 0);
    let starts = h.fake.s.lock().unwrap().log.iter().filter(|l| **l == format!("start {}", before["never"].0)).count();
    assert_eq!(starts, 1, "a Never container ran again");
    assert!(h.fake.task(&before["never"].0).is_none());
}

/// restartPolicy, stopSignal, terminationGracePeriodSeconds,
/// imagePullPolicy and limits change without replacing the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_shaping_spec_changes_keep_the_container() {
    let h = Harness::start().await;
    h.apply("web", json!({"image": "busybox", "args": ["sleep"]})).await;
    let o = h.wait_for("web", "Running", |o| phase(o) == "Running").await.unwrap();
    let (id, pid) = (container_of(&o), o["status"]["pid"].as_u64().unwrap());
    h.apply(
        "web",
        json!({"image": "busybox", "args": ["sleep"], "restartPolicy": "OnFailure", "stopSignal": "SIGINT",
               "terminationGracePeriodSeconds": 3, "imagePullPolicy": "Always", "resources": {"limits": {"memory": "64Mi"}}}),
    )
    .await;
    h.wait_for("web", "generation 2 observed", |o| o.is_some_and(|o| o["status"]["observedGeneration"] == 2)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !h.fake.s.lock().unwrap().log.iter().any(|l| l == &format!("resize {id}")) {
        assert!(tokio::time::Instant::now() < deadline, "limits not applied in place: {:?}", h.fake.s.lock().unwrap().log);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let o = h.get("web").await.unwrap();
    assert_eq!((container_of(&o), o["status"]["pid"].as_u64()), (id.clone(), Some(pid)));
    assert_eq!(h.fake.ids(), std::slice::from_ref(&id));
    let c = h.fake.s.lock().unwrap().containers[&id].clone();
    assert_eq!((c.label(LABEL_STOP_SIGNAL), c.label(LABEL_STOP_GRACE)), ("2", "3"));
    assert_eq!(c.label(LABEL_LIMITS), "memory=67108864,cpu=,pids=");
    // Deleting stops it the way it now records.
    let r = h.http.delete(format!("{}{BASE}/web", h.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.wait_for("web", "deleted", |o| o.is_none()).await;
    assert!(h.fake.s.lock().unwrap().log.iter().any(|l| l == &format!("kill {id} 2")));
}

/// Limits the runtime refuses in place leave the container running with
/// its old ones, and a `ResizePending` condition saying why; it goes once
/// limits that fit are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infeasible_resize_is_reported_and_cleared() {
    let h = Harness::start().await;
    h.apply("web", json!({"image": "busybox", "args": ["sleep"]})).await;
    let o = h.wait_for("web", "Running", |o| phase(o) == "Running").await.unwrap();
    let (id, pid) = (container_of(&o), o["status"]["pid"].clone());
    let pending = |o: Option<&Value>| {
        o.and_then(|o| o["status"]["conditions"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["type"] == "ResizePending")
    };
    h.apply("web", json!({"image": "busybox", "args": ["sleep"], "resources": {"limits": {"memory": "1Ki"}}})).await;
    let o = h.wait_for("web", "ResizePending", |o| pending(o).is_some()).await.unwrap();
    let c = pending(Some(&o)).unwrap();
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("Infeasible")));
    assert!(c["message"].as_str().unwrap_or_default().contains("unable to set memory limit"), "{c}");
    assert_eq!((container_of(&o), o["status"]["pid"].clone(), phase(Some(&o))), (id.clone(), pid.clone(), "Running"));
    h.apply("web", json!({"image": "busybox", "args": ["sleep"], "resources": {"limits": {"memory": "32Mi"}}})).await;
    let o = h.wait_for("web", "ResizePending gone", |o| o.is_some_and(|o| o["status"]["observedGeneration"] == 3) && pending(o).is_none()).await.unwrap();
    assert_eq!((container_of(&o), o["status"]["pid"].clone()), (id.clone(), pid));
    assert_eq!(h.fake.s.lock().unwrap().containers[&id].label(LABEL_LIMITS), "memory=33554432,cpu=,pids=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_containers_of_one_image_share_one_pull_outside_the_slots() {
    // Two reconcile slots, twelve containers waiting for one slow pull.
    let h = Harness::start().await;
    let names: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    for n in &names {
        h.apply(n, json!({"image": "127.0.0.1:5000/gated:1"})).await;
    }
    for n in &names {
        h.wait_for(n, "ImagePulling", |o| waiting(o) == "ImagePulling").await;
    }
    // The slots are free: a container whose image is here starts meanwhile.
    h.apply("cached", json!({"image": "busybox"})).await;
    h.wait_for("cached", "Running while the pull is held", |o| phase(o) == "Running").await;
    assert_eq!(h.fake.pulls.lock().unwrap().clone(), BTreeMap::from([("127.0.0.1:5000/gated:1".to_string(), 1)]));

    h.fake.open_gate.send(true).unwrap();
    for n in &names {
        h.wait_for(n, "Running after the shared pull", |o| phase(o) == "Running").await;
    }
    assert_eq!(
        h.fake.pulls.lock().unwrap().clone(),
        BTreeMap::from([("127.0.0.1:5000/gated:1".to_string(), 1)]),
        "one pull for all twelve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_pull_reaches_every_waiter() {
    let h = Harness::start().await;
    for n in ["m1", "m2", "m3"] {
        h.apply(n, json!({"image": "127.0.0.1:5000/missing:1"})).await;
    }
    for n in ["m1", "m2", "m3"] {
        let o = h.wait_for(n, "ErrImagePull", |o| matches!(waiting(o), "ErrImagePull" | "ImagePullBackOff")).await.unwrap();
        let msg = o["status"]["state"]["waiting"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("manifest unknown"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_with_the_object_and_orphan_logs_are_collected() {
    let h = Harness::start().await;
    h.apply("gone", json!({"image": "busybox"})).await;
    h.apply("stays", json!({"image": "busybox"})).await;
    let gone = h.wait_for("gone", "Running", |o| phase(o) == "Running").await.unwrap();
    h.wait_for("stays", "Running", |o| phase(o) == "Running").await;
    let gone_uid = gone["metadata"]["uid"].as_str().unwrap().to_string();
    // A spec change keeps them (for `logs --previous`) ...
    h.apply("stays", json!({"image": "busybox", "args": ["v2"]})).await;
    h.wait_for("stays", "Running v2", |o| {
        phase(o) == "Running" && o.and_then(|o| o.pointer("/status/observedGeneration")).and_then(Value::as_i64) == Some(2)
    })
    .await;
    assert!(!h.fake.s.lock().unwrap().log.iter().any(|l| l.starts_with("remove-logs default/stays")));
    // ... deleting the object removes them, after its containers.
    h.http.delete(format!("{}{BASE}/gone", h.url)).send().await.unwrap();
    h.wait_for("gone", "deleted", |o| o.is_none()).await;
    let log = h.fake.s.lock().unwrap().log.clone();
    let removed_at = log.iter().position(|l| *l == format!("remove-logs default/gone {gone_uid}")).expect("logs removed");
    assert!(log[..removed_at].iter().any(|l| l.starts_with("remove default.gone.")), "{log:?}");

    // Logs a crash left behind (container removed, logs not): collected by
    // the sweep after a live GET; a live object's logs stay.
    let owner = |name: &str, uid: &str| LogOwner { namespace: "default".into(), name: name.into(), uid: uid.into() };
    h.fake.s.lock().unwrap().logs.push(owner("crashed", "u-crashed"));
    h.fake.s.lock().unwrap().logs.push(owner("stays", "u-older-incarnation"));
    let ctl = Controller::<Container, _>::new(Arc::new(Api::all(&h.url)), Config::default());
    let cache = ctl.cache();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(ctl.run(|_| async { Ok::<_, String>(steward_controller::runtime::controller::Action::AwaitChange) }, async move {
        let _ = rx.await;
    }));
    cache.wait_ready().await;
    let gc = Collector { runtime: h.fake.clone(), api: Api::all(&h.url), store_uid: StoreUid::new(STORE).unwrap() };
    assert_eq!(gc.sweep(&cache).await.unwrap().logs_collected, 2);
    let owners: Vec<String> = h.fake.s.lock().unwrap().logs.iter().map(|o| o.name.clone()).collect();
    assert_eq!(owners, ["stays"]);
    let _ = tx.send(());
    run.await.unwrap();
}

/// A rootfs snapshot removed behind steward's back: prepared again from the
/// image the container was made from (pinned by digest), with no status
/// write, no kill and no start: a running container keeps its pid, a
/// finished `Never` one stays Succeeded and does not run again, even when
/// its pull policy is Always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_rootfs_is_prepared_again_without_touching_the_task() {
    let h = Harness::start().await;
    h.apply("run", json!({"image": "busybox", "args": ["sleep"]})).await;
    h.apply("job", json!({"image": "busybox", "args": ["exit=0"], "restartPolicy": "Never", "imagePullPolicy": "Always"})).await;
    let run = h.wait_for("run", "Running", |o| phase(o) == "Running").await.unwrap();
    let job = h.wait_for("job", "Succeeded", |o| phase(o) == "Succeeded").await.unwrap();
    let (run_id, job_id) = (container_of(&run), container_of(&job));
    let rv = |o: &Value| o["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
    for id in [&run_id, &job_id] {
        h.fake.s.lock().unwrap().containers.get_mut(id).unwrap().rootfs_missing = true;
        let _ = h.fake.events.send(id.clone());
    }
    for id in [&run_id, &job_id] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while h.fake.s.lock().unwrap().containers[id].rootfs_missing {
            assert!(tokio::time::Instant::now() < deadline, "{id}: rootfs never prepared again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (run2, job2) = (h.get("run").await.unwrap(), h.get("job").await.unwrap());
    assert_eq!(rv(&run2), rv(&run), "no status write for the running one");
    assert_eq!(rv(&job2), rv(&job), "no status write for the finished one");
    assert_eq!(run2["status"]["pid"], run["status"]["pid"]);
    let log = h.fake.s.lock().unwrap().log.clone();
    assert_eq!(log.iter().filter(|l| **l == format!("start {job_id}")).count(), 1, "the Never job ran again: {log:?}");
    assert!(!log.iter().any(|l| l.starts_with(&format!("kill {run_id}"))), "the running one was signalled: {log:?}");
    // The repair asked for the image by its digest, not the tag.
    let pulls = h.fake.pulls.lock().unwrap().clone();
    assert!(pulls.keys().any(|i| i.contains("@sha256:")), "{pulls:?}");
}

/// Exec probes that always pass (these tests have none).
struct ExitZero;

impl steward_controller::container::probes::ExecProber for ExitZero {
    fn exec_probe(&self, _id: &str, _cmd: Vec<String>, _t: Duration) -> futures_util::future::BoxFuture<'static, Result<i32, String>> {
        Box::pin(async { Ok(0) })
    }
}
