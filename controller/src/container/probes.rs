//! Health probes, as the kubelet's prober: one timer task per probe of a
//! running container (keyed by its task's pid, so a new run starts from
//! scratch), each turning consecutive results into an outcome past its
//! thresholds. Only a change of outcome wakes the object's reconcile, which
//! reads the outcomes ([`ProbeView`]) and decides: `Ready`, or a restart
//! after a failed liveness or startup probe. No polling loop: an idle
//! probe is a sleeping task.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use steward_schema::{ContainerSpec, Probe, Scheme};
use tokio::sync::mpsc;

use crate::runtime::ObjectRef;

/// What a probe concluded, past its thresholds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// No conclusion yet (not run, or not enough results).
    #[default]
    Unknown,
    Success,
    /// Failed `failureThreshold` times in a row; the last failure.
    Failure(String),
}

/// The outcomes of one run's probes, for the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeView {
    pub startup: Outcome,
    pub readiness: Outcome,
    pub liveness: Outcome,
}

/// Where a container's http and tcp probes connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Its address on its bridge network.
    Ip(Ipv4Addr),
    /// `network: host`: the host's loopback.
    Loopback,
    /// No address (`network: none`, or not attached yet): http and tcp
    /// probes fail saying so.
    Unreachable,
}

/// Runs exec probes (containerd's Tasks.Exec); exit code or why not.
pub trait ExecProber: Send + Sync + 'static {
    fn exec_probe(&self, container_id: &str, command: Vec<String>, timeout: Duration) -> BoxFuture<'static, Result<i32, String>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// The probes of one run of one object's container.
struct Run {
    id: String,
    pid: u32,
    /// What the workers were started for; anything else restarts them.
    fingerprint: String,
    view: Arc<Mutex<ProbeView>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every probe steward runs, keyed by object uid.
pub struct Prober {
    runs: Mutex<HashMap<String, Run>>,
    exec: Arc<dyn ExecProber>,
    http: reqwest::Client,
    wake: mpsc::Sender<ObjectRef>,
}

impl Prober {
    /// A prober running exec probes through `exec`; the stream of objects
    /// whose probe outcomes changed goes to the controller as a trigger.
    pub fn new(exec: Arc<dyn ExecProber>) -> (Arc<Prober>, mpsc::Receiver<ObjectRef>) {
        let (wake, rx) = mpsc::channel(1024);
        let http = reqwest::Client::builder()
            // The kubelet checks no certificates either: a probe asks
            // "does it answer", not "is it who it says".
            .danger_accept_invalid_certs(true)
            // Straight to the container: never through an HTTP(S)_PROXY
            // of steward's environment (set for image pulls, say).
            .no_proxy()
            // As the kubelet: redirects only to the same host (a
            // container cannot point steward, root on the host, at
            // another address and learn the answer through Ready).
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let key = |u: &reqwest::Url| (u.host_str().map(String::from), u.port_or_known_default());
                let same_host = attempt.previous().first().map(key) == Some(key(attempt.url()));
                if attempt.previous().len() >= 10 || !same_host {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            }))
            // A fresh connection per probe, as the kubelet's.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("steward-probe/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        (Arc::new(Prober { runs: Mutex::new(HashMap::new()), exec, http, wake }), rx)
    }

    /// The outcomes for the run (container `id`, task `pid`) of object
    /// `key`/`uid`, starting its probes if they are not running for
    /// exactly this run, target and spec.
    pub fn view(&self, key: &ObjectRef, uid: &str, id: &str, pid: u32, target: Target, spec: &ContainerSpec) -> ProbeView {
        let probes = [
            (Kind::Startup, spec.startup_probe.clone()),
            (Kind::Readiness, spec.readiness_probe.clone()),
            (Kind::Liveness, spec.liveness_probe.clone()),
        ];
        if probes.iter().all(|(_, p)| p.is_none()) {
            self.forget(uid);
            return ProbeView::default();
        }
        let fingerprint = format!("{:?}{target:?}{:?}", probes, spec.ports);
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = runs.get(uid) {
            if r.id == id && r.pid == pid && r.fingerprint == fingerprint {
                return r.view.lock().map(|v| v.clone()).unwrap_or_default();
            }
        }
        let view = Arc::new(Mutex::new(ProbeView::default()));
        let (started_tx, started_rx) = tokio::sync::watch::channel(spec.startup_probe.is_none());
        let started_tx = Arc::new(started_tx);
        let mut tasks = Vec::new();
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let worker = Worker {
                kind,
                probe,
                spec: spec.clone(),
                target,
                id: id.to_string(),
                key: key.clone(),
                view: view.clone(),
                exec: self.exec.clone(),
                http: self.http.clone(),
                wake: self.wake.clone(),
                started: started_rx.clone(),
                started_tx: started_tx.clone(),
            };
            tasks.push(tokio::spawn(worker.run()));
        }
        runs.insert(uid.to_string(), Run { id: id.to_string(), pid, fingerprint, view, tasks });
        ProbeView::default()
    }

    /// Stops the probes of object `uid` (its container does not run).
    pub fn forget(&self, uid: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.remove(uid);
    }

    /// How many runs are probed (for tests and metrics).
    pub fn len(&self) -> usize {
        self.runs.lock().map(|r| r.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Worker {
    kind: Kind,
    probe: Probe,
    spec: ContainerSpec,
    target: Target,
    id: String,
    key: ObjectRef,
    view: Arc<Mutex<ProbeView>>,
    exec: Arc<dyn ExecProber>,
    http: reqwest::Client,
    wake: mpsc::Sender<ObjectRef>,
    started: tokio::sync::watch::Receiver<bool>,
    started_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

impl Worker {
    async fn run(mut self) {
        let p = &self.probe;
        let (delay, period, timeout) = (secs(p.initial_delay_seconds, 0), secs(p.period_seconds, 10).max(Duration::from_secs(1)), secs(p.timeout_seconds, 1).max(Duration::from_secs(1)));
        let success_threshold = p.success_threshold.unwrap_or(1).max(1) as u32;
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1) as u32;
        // Readiness and liveness wait for the startup probe.
        if self.kind != Kind::Startup {
            let _ = self.started.wait_for(|s| *s).await;
        }
        tokio::time::sleep(delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut outcome = Outcome::Unknown;
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::time::sleep_until(next).await;
            next += period;
            let result = self.once(timeout).await;
            match &result {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                }
                Err(_) => {
                    failures += 1;
                    successes = 0;
                }
            }
            let new = match result {
                Ok(()) if successes >= success_threshold || outcome == Outcome::Success => Outcome::Success,
                Err(m) if failures >= failure_threshold => Outcome::Failure(format!("{} probe failed: {m}", self.kind.name())),
                // Not past a threshold: the outcome stands.
                _ => outcome.clone(),
            };
            if new != outcome {
                tracing::info!(container = %self.id, object = %self.key, probe = self.kind.name(), outcome = ?new, "probe outcome changed");
                outcome = new.clone();
                if let Ok(mut v) = self.view.lock() {
                    match self.kind {
                        Kind::Startup => v.startup = new.clone(),
                        Kind::Readiness => v.readiness = new.clone(),
                        Kind::Liveness => v.liveness = new.clone(),
                    }
                }
                // Full: a resync catches up.
                let _ = self.wake.try_send(self.key.clone());
            }
            match (self.kind, &outcome) {
                // Started: the others begin; this one is done.
                (Kind::Startup, Outcome::Success) => {
                    let _ = self.started_tx.send(true);
                    return;
                }
                // The container is restarted; the next run has probes of its own.
                (Kind::Startup | Kind::Liveness, Outcome::Failure(_)) => return,
                _ => {}
            }
        }
    }

    /// One probe: `Ok` or why it failed.
    async fn once(&self, timeout: Duration) -> Result<(), String> {
        let p = &self.probe;
        if let Some(e) = &p.exec {
            return match self.exec.exec_probe(&self.id, e.command.clone(), timeout).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("command {:?} exited with {code}", e.command)),
                Err(m) => Err(m),
            };
        }
        let ip = match self.target {
            Target::Ip(ip) => ip,
            Target::Loopback => Ipv4Addr::LOCALHOST,
            Target::Unreachable => return Err("the container has no address to probe".into()),
        };
        if let Some(h) = &p.http_get {
            let port = self.spec.resolve_port(&h.port).ok_or_else(|| format!("port {:?} is not one of spec.ports", h.port))?;
            let scheme = if h.scheme == Some(Scheme::Https) { "https" } else { "http" };
            let url = format!("{scheme}://{ip}:{port}{}", h.path.as_deref().unwrap_or("/"));
            let mut req = self.http.get(&url).timeout(timeout);
            for hd in &h.http_headers {
                req = req.header(hd.name.as_str(), hd.value.as_str());
            }
            let resp = req.send().await.map_err(|e| format!("GET {url}: {}", reqwest_reason(&e)))?;
            let code = resp.status().as_u16();
            return if (200..400).contains(&code) { Ok(()) } else { Err(format!("GET {url}: HTTP {code}")) };
        }
        if let Some(t) = &p.tcp_socket {
            let port = self.spec.resolve_port(&t.port).ok_or_else(|| format!("port {:?} is not one of spec.ports", t.port))?;
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {ip}:{port}: {e}")),
                Err(_) => Err(format!("connect {ip}:{port}: no answer in {}s", timeout.as_secs())),
            };
        }
        Err("no probe handler".into())
    }
}

fn reqwest_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    struct FakeExec(Arc<AtomicI32>);

    impl ExecProber for FakeExec {
        fn exec_probe(&self, _id: &str, _cmd: Vec<String>, _t: Duration) -> BoxFuture<'static, Result<i32, String>> {
            let code = self.0.load(Ordering::SeqCst);
            Box::pin(async move { Ok(code) })
        }
    }

    fn exec_probe(period: i32, failure: i32) -> Probe {
        Probe {
            exec: Some(steward_schema::ExecAction { command: vec!["check".into()] }),
            period_seconds: Some(period),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_turn_results_into_outcomes_and_changes_wake_the_object() {
        let code = Arc::new(AtomicI32::new(0));
        let (prober, mut woken) = Prober::new(Arc::new(FakeExec(code.clone())));
        let spec = ContainerSpec { liveness_probe: Some(exec_probe(10, 3)), readiness_probe: Some(exec_probe(10, 1)), ..Default::default() };
        let key = ObjectRef::new("default", "web");
        let view = |p: &Prober| p.view(&key, "uid1", "c1", 42, Target::Unreachable, &spec);
        assert_eq!(view(&prober), ProbeView::default());
        // First results: both succeed.
        assert_eq!(woken.recv().await, Some(key.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let v = view(&prober);
        assert_eq!((v.readiness.clone(), v.liveness.clone()), (Outcome::Success, Outcome::Success));
        // Failing: readiness (threshold 1) at once, liveness after 3.
        code.store(3, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(view(&prober).readiness, Outcome::Failure(_)));
        assert_eq!(view(&prober).liveness, Outcome::Success);
        tokio::time::sleep(Duration::from_secs(20)).await;
        match view(&prober).liveness {
            Outcome::Failure(m) => assert!(m.starts_with("Liveness probe failed: command [\"check\"] exited with 3"), "{m}"),
            o => panic!("{o:?}"),
        }
        // A new run (another pid) starts from nothing.
        let v = prober.view(&key, "uid1", "c1", 43, Target::Unreachable, &spec);
        assert_eq!(v, ProbeView::default());
        prober.forget("uid1");
        assert!(prober.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_probe_holds_the_others() {
        let code = Arc::new(AtomicI32::new(1));
        let (prober, _woken) = Prober::new(Arc::new(FakeExec(code.clone())));
        let spec = ContainerSpec {
            startup_probe: Some(exec_probe(1, 100)),
            liveness_probe: Some(exec_probe(1, 1)),
            ..Default::default()
        };
        let key = ObjectRef::new("default", "slow");
        let view = |p: &Prober| p.view(&key, "u", "c", 7, Target::Unreachable, &spec);
        view(&prober);
        // The command fails: liveness would fail at once, but startup has
        // not passed, so liveness does not run.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let v = view(&prober);
        assert_eq!((v.startup.clone(), v.liveness.clone()), (Outcome::Unknown, Outcome::Unknown));
        code.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let v = view(&prober);
        assert_eq!((v.startup.clone(), v.liveness.clone()), (Outcome::Success, Outcome::Success));
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_the_target() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ready ") && req.contains("x-probe: yes") { "200 OK" } else { "503 Unavailable" };
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
            }
        });
        let (prober, _w) = Prober::new(Arc::new(FakeExec(Arc::new(AtomicI32::new(0)))));
        let spec = ContainerSpec {
            ports: vec![steward_schema::ContainerPort { name: Some("http".into()), container_port: port as i32, ..Default::default() }],
            ..Default::default()
        };
        let worker = |probe: Probe| Worker {
            kind: Kind::Readiness,
            probe,
            spec: spec.clone(),
            target: Target::Loopback,
            id: "c".into(),
            key: ObjectRef::new("default", "w"),
            view: Arc::new(Mutex::new(ProbeView::default())),
            exec: prober.exec.clone(),
            http: prober.http.clone(),
            wake: prober.wake.clone(),
            started: tokio::sync::watch::channel(true).1,
            started_tx: Arc::new(tokio::sync::watch::channel(true).0),
        };
        let http = |path: &str, header: bool| Probe {
            http_get: Some(steward_schema::HttpGetAction {
                path: Some(path.into()),
                port: steward_schema::PortRef::Name("http".into()),
                scheme: None,
                http_headers: if header { vec![steward_schema::HttpHeader { name: "X-Probe".into(), value: "yes".into() }] } else { vec![] },
            }),
            ..Default::default()
        };
        let t = Duration::from_secs(2);
        assert_eq!(worker(http("/ready", true)).once(t).await, Ok(()));
        let e = worker(http("/ready", false)).once(t).await.expect_err("no header");
        assert!(e.contains("HTTP 503"), "{e}");
        let tcp = Probe { tcp_socket: Some(steward_schema::TcpSocketAction { port: steward_schema::PortRef::Number(port as i32) }), ..Default::default() };
        assert_eq!(worker(tcp).once(t).await, Ok(()));
        let closed = free_port();
        let tcp = Probe { tcp_socket: Some(steward_schema::TcpSocketAction { port: steward_schema::PortRef::Number(closed as i32) }), ..Default::default() };
        assert!(worker(tcp).once(t).await.is_err());
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(1)
    }
}
