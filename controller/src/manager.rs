//! Runs steward's controllers against an API server: the Container
//! reconciler, fed by watch events and the runtime's event stream, plus the
//! periodic garbage collection of runtime containers nobody owns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use steward_schema::Container;

use crate::actual::{Runtime, StoreUid, LABEL_NAME, LABEL_NAMESPACE};
use crate::runtime::ObjectRef;
use crate::client::Api;
use crate::container::gc::Collector;
use crate::container::probes::{ExecProber, Prober};
use crate::container::pulls::Pulls;
use crate::container::reconciler::{object_of, reconcile, Context};
use crate::runtime::controller::{Config, Controller};

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub controller: Config,
    /// How often runtime containers are checked for garbage (also once at
    /// start, when the cache is loaded).
    pub gc_interval: Duration,
    /// The identity of the store (see `container::gc`): labels every
    /// container created; only containers with it are ever collected.
    /// Never empty (no default: a steward must say which store it serves).
    pub store_uid: StoreUid,
}

impl ManagerConfig {
    /// The defaults, for the store `store_uid`.
    pub fn new(store_uid: StoreUid) -> Self {
        ManagerConfig { controller: Config::default(), gc_interval: Duration::from_secs(300), store_uid }
    }
}

/// Exec probes through the container runtime.
struct RuntimeExec<R>(Arc<R>);

impl<R: Runtime> ExecProber for RuntimeExec<R> {
    fn exec_probe(&self, id: &str, command: Vec<String>, timeout: Duration) -> futures_util::future::BoxFuture<'static, Result<i32, String>> {
        let (rt, id) = (self.0.clone(), id.to_string());
        // Its own task: a prober stopped mid-probe (the probes changed, the
        // container went) does not cut the exec's clean-up (kill, delete).
        let probe = tokio::spawn(async move { rt.exec_probe(&id, command, timeout).await.map_err(|e| e.to_string()) });
        Box::pin(async move { probe.await.map_err(|e| format!("exec probe: {e}"))? })
    }
}

/// Runs until `shutdown` resolves; reconciles in flight finish first.
/// Containers are never stopped because steward stops.
pub async fn run<R: Runtime>(
    client: steward_client::Client,
    runtime: Arc<R>,
    config: ManagerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let events = crate::events::Recorder::new(client.clone());
    let api: Api<Container> = Api::new(client);
    // Pulls run outside the reconcile slots; their waiters are woken when
    // they end.
    let (pulls, pulled) = Pulls::new(runtime.clone());
    // Probes run on timers of their own; a changed outcome wakes the object.
    let (prober, probed) = Prober::new(Arc::new(RuntimeExec(runtime.clone())));
    let probed = futures_util::stream::unfold(probed, |mut rx| async move { rx.recv().await.map(|k| (k, rx)) });
    let ctx = Arc::new(Context { api: api.clone(), runtime: runtime.clone(), store_uid: config.store_uid.clone(), pulls, prober, events });
    let collector = Collector { runtime: runtime.clone(), api: api.clone(), store_uid: config.store_uid.clone() };
    let mut created = runtime.created();
    // Runtime events name containers; most ids say whose they are, hashed
    // ones are looked up by their labels.
    let lookup = runtime.clone();
    let events = runtime.events().filter_map(move |id| {
        let rt = lookup.clone();
        async move {
            if let Some(key) = object_of(&id) {
                return Some(key);
            }
            let all = rt.list().await.ok()?;
            let c = all.into_iter().find(|c| c.id == id)?;
            Some(ObjectRef::new(c.label(LABEL_NAMESPACE), c.label(LABEL_NAME)))
        }
    });
    let ctl = Controller::new(Arc::new(api), config.controller).trigger(events).trigger(pulled).trigger(probed);
    let cache = ctl.cache();
    let gc = tokio::spawn(async move {
        cache.wait_ready().await;
        // A sweep at start, then every gc_interval, sooner while orphans
        // are in their grace period; a container created by anyone is
        // looked at at once (a stray is gone within seconds).
        let mut next = tokio::time::Instant::now();
        loop {
            let report = tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + config.gc_interval;
                    collector.sweep(&cache).await
                }
                Some(id) = created.next() => collector.check(&id, Some(&cache)).await,
            };
            match report {
                Ok(r) => {
                    if r.collected > 0 || r.adopted > 0 {
                        tracing::info!(collected = r.collected, adopted = r.adopted, "garbage collected");
                    }
                    if let Some(d) = r.again_in {
                        next = next.min(tokio::time::Instant::now() + d);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection failed");
                    next = next.min(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
        }
    });
    tracing::info!("controllers running");
    ctl.run(move |o| reconcile(o, ctx.clone()), shutdown).await;
    gc.abort();
    tracing::info!("controllers stopped");
}
