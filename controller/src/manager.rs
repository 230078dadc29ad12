//! Runs steward's controllers against an API server: the Container
//! reconciler, fed by watch events and the runtime's event stream, plus the
//! periodic garbage collection of runtime containers nobody owns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use steward_schema::Container;

use crate::actual::{Runtime, LABEL_NAME, LABEL_NAMESPACE};
use crate::runtime::ObjectRef;
use crate::client::Api;
use crate::container::reconciler::{collect_garbage, object_of, reconcile, Context};
use crate::runtime::controller::{Config, Controller};

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub controller: Config,
    /// How often runtime containers are checked for garbage (also once at
    /// start, when the cache is loaded).
    pub gc_interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig { controller: Config::default(), gc_interval: Duration::from_secs(300) }
    }
}

/// Runs until `shutdown` resolves; reconciles in flight finish first.
/// Containers are never stopped because steward stops.
pub async fn run<R: Runtime>(
    server: &str,
    token: Option<&str>,
    runtime: Arc<R>,
    config: ManagerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<Container> = Api::all_with_token(server, token);
    let ctx = Arc::new(Context { api: api.clone(), runtime: runtime.clone() });
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
    let ctl = Controller::new(Arc::new(api), config.controller).trigger(events);
    let cache = ctl.cache();
    let gc = tokio::spawn(async move {
        cache.wait_ready().await;
        loop {
            match collect_garbage(runtime.as_ref(), &cache).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(collected = n, "garbage collected"),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
            tokio::time::sleep(config.gc_interval).await;
        }
    });
    tracing::info!("controllers running");
    ctl.run(move |o| reconcile(o, ctx.clone()), shutdown).await;
    gc.abort();
    tracing::info!("controllers stopped");
}
