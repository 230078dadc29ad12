//! The controller: watcher → cache + queue → bounded workers → reconcile.
//!
//! Reconcilers are plain async functions of the object returning an
//! [`Action`]; they never see the queue. An error requeues the key after a
//! per-key exponential backoff; `Requeue(d)` after `d`; `AwaitChange` only
//! when something changes (a watch event, an extra trigger, the resync).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{BoxStream, Stream};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::backoff::Backoff;
use super::queue::WorkQueue;
use super::watcher::{watcher, Event};
use super::{ObjectRef, Resource, Source};

/// How long shutdown waits for reconciles in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What to do after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long, even if nothing changes.
    Requeue(Duration),
    /// Reconcile again only when something changes.
    AwaitChange,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Reconciles running at once (distinct keys).
    pub concurrency: usize,
    /// Every object is reconciled again this often, changed or not.
    pub resync: Option<Duration>,
    /// Per-key backoff after a failed reconcile.
    pub error_backoff: (Duration, Duration),
    /// Backoff between failed list/watch attempts.
    pub watch_backoff: (Duration, Duration),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 4,
            resync: Some(Duration::from_secs(300)),
            error_backoff: (Duration::from_millis(500), Duration::from_secs(300)),
            watch_backoff: (Duration::from_millis(200), Duration::from_secs(30)),
        }
    }
}

/// The reflector cache: the latest version of every object the watcher
/// has seen. Cheap to clone; readers never block the watcher for long.
pub struct Cache<K> {
    objects: Arc<RwLock<HashMap<ObjectRef, Arc<K>>>>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache { objects: self.objects.clone(), ready: self.ready.clone() }
    }
}

impl<K: Resource> Default for Cache<K> {
    fn default() -> Self {
        Cache { objects: Default::default(), ready: Arc::new(tokio::sync::watch::channel(false).0) }
    }
}

impl<K: Resource> Cache<K> {
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<ObjectRef> {
        self.objects.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Waits until the first list has been loaded.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Applies a watcher event; returns the keys to reconcile.
    fn apply(&self, event: Event<K>) -> Vec<ObjectRef> {
        let mut map = self.objects.write().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Restarted(items) => {
                let mut keys: Vec<ObjectRef> = map.keys().cloned().collect();
                map.clear();
                for k in items {
                    let r = k.object_ref();
                    keys.push(r.clone());
                    map.insert(r, Arc::new(k));
                }
                self.ready.send_replace(true);
                keys.sort();
                keys.dedup();
                keys
            }
            Event::Applied(k) => {
                let r = k.object_ref();
                map.insert(r.clone(), Arc::new(k));
                vec![r]
            }
            Event::Deleted(k) => {
                let r = k.object_ref();
                map.remove(&r);
                vec![r]
            }
        }
    }
}

pub struct Controller<K: Resource, S> {
    source: Arc<S>,
    config: Config,
    cache: Cache<K>,
    triggers: Vec<BoxStream<'static, ObjectRef>>,
}

impl<K: Resource, S: Source<K>> Controller<K, S> {
    pub fn new(source: Arc<S>, config: Config) -> Self {
        Controller { source, config, cache: Cache::default(), triggers: Vec::new() }
    }

    /// An extra event source (containerd's events, say) whose keys are
    /// queued like watch events.
    pub fn trigger(mut self, stream: impl Stream<Item = ObjectRef> + Send + 'static) -> Self {
        self.triggers.push(stream.boxed());
        self
    }

    /// A reader of the controller's cache.
    pub fn cache(&self) -> Cache<K> {
        self.cache.clone()
    }

    /// Runs until `shutdown` resolves, then stops taking work and waits for
    /// the reconciles in flight to finish.
    pub async fn run<F, Fut, E>(self, reconcile: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(Arc<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let Controller { source, config, cache, triggers } = self;
        let queue = Arc::new(WorkQueue::<ObjectRef>::new());
        let mut background = Vec::new();

        // Watch events feed the cache, then the queue.
        let (q, c) = (queue.clone(), cache.clone());
        let backoff = Backoff::new(config.watch_backoff.0, config.watch_backoff.1);
        background.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(source, backoff));
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => c.apply(ev).into_iter().for_each(|k| q.add(k)),
                    Err(e) => tracing::warn!(kind = K::PLURAL, error = %e, "watch failed; retrying"),
                }
            }
        }));
        for mut t in triggers {
            let q = queue.clone();
            background.push(tokio::spawn(async move {
                while let Some(k) = t.next().await {
                    q.add(k);
                }
            }));
        }
        if let Some(every) = config.resync {
            let (q, c) = (queue.clone(), cache.clone());
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    c.keys().into_iter().for_each(|k| q.add(k));
                }
            }));
        }

        let concurrency = config.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let reconcile = Arc::new(reconcile);
        let backoffs: Arc<Mutex<HashMap<ObjectRef, Backoff>>> = Default::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A free slot first, then a key: a key taken from the queue is
            // "running", so it must not wait for a slot.
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let key = tokio::select! {
                _ = &mut shutdown => break,
                k = queue.next() => match k { Some(k) => k, None => break },
            };
            let Some(obj) = cache.get(&key) else {
                // Gone from the cache: nothing to reconcile (finalizers keep
                // objects that need clean-up in the cache until it is done).
                backoffs.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                queue.done(&key);
                continue;
            };
            let (queue, reconcile, backoffs) = (queue.clone(), reconcile.clone(), backoffs.clone());
            let err_backoff = config.error_backoff;
            tokio::spawn(async move {
                let span = tracing::info_span!("reconcile", key = %key, rv = %obj.meta().resource_version);
                let result = reconcile(obj).instrument(span.clone()).await;
                let mut b = backoffs.lock().unwrap_or_else(|p| p.into_inner());
                let delay = match result {
                    Ok(action) => {
                        b.remove(&key);
                        match action {
                            Action::Requeue(d) => Some(d),
                            Action::AwaitChange => None,
                        }
                    }
                    Err(e) => {
                        let d = b.entry(key.clone()).or_insert_with(|| Backoff::new(err_backoff.0, err_backoff.1)).next_delay();
                        span.in_scope(|| tracing::warn!(error = %e, retry_in = ?d, "reconcile failed"));
                        Some(d)
                    }
                };
                drop(b);
                queue.done(&key);
                if let Some(d) = delay {
                    queue.add_after(key, d);
                }
                drop(permit);
            });
        }
        queue.shutdown();
        for b in background {
            b.abort();
        }
        // Wait for the reconciles in flight, but not for ever (a pull from a
        // registry that stopped answering): past the bound they are dropped
        // with the runtime, and the next start picks their keys up again.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(concurrency as u32)).await;
        if drained.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running at shutdown; leaving them");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use steward_schema::Container;

    use super::super::watcher::tests::{obj, Scripted};
    use super::super::{SourceError, WatchEvent};
    use super::*;

    type Log = Arc<Mutex<Vec<(String, String)>>>;

    #[tokio::test(start_paused = true)]
    async fn reconciles_every_object_backs_off_and_never_runs_a_key_twice_at_once() {
        let s = Arc::new(Scripted::default());
        s.lists.lock().unwrap().push_back(Ok((vec![obj("ok", "1"), obj("flaky", "2")], "2".into())));
        s.watches.lock().unwrap().push_back(Ok(vec![
            Ok(WatchEvent::Modified(obj("ok", "3"))),
            Ok(WatchEvent::Modified(obj("ok", "4"))),
        ]));
        let log: Log = Default::default();
        let running = Arc::new(AtomicUsize::new(0));
        let flaky_calls = Arc::new(AtomicUsize::new(0));
        let (l, r, f) = (log.clone(), running.clone(), flaky_calls.clone());
        let reconcile = move |c: Arc<Container>| {
            let (l, r, f) = (l.clone(), r.clone(), f.clone());
            async move {
                let name = c.metadata.name.clone();
                assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "two reconciles at once with concurrency 1");
                tokio::time::sleep(Duration::from_millis(50)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                l.lock().unwrap().push((name.clone(), c.metadata.resource_version.clone()));
                if name == "flaky" && f.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Err("containerd said no".to_string());
                }
                Ok(Action::AwaitChange)
            }
        };
        let cfg = Config {
            concurrency: 1,
            resync: None,
            error_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            ..Default::default()
        };
        let ctl = Controller::new(s, cfg);
        let start = tokio::time::Instant::now();
        ctl.run(reconcile, tokio::time::sleep(Duration::from_secs(30))).await;
        let log = log.lock().unwrap().clone();
        // flaky: first try + 3 retries after 1, 2, 4 s of backoff.
        assert_eq!(flaky_calls.load(Ordering::SeqCst), 4);
        // ok: the two quick updates were deduplicated into at most two runs,
        // and the last one saw the newest version.
        let ok: Vec<&String> = log.iter().filter(|(n, _)| n == "ok").map(|(_, rv)| rv).collect();
        assert!(ok.len() <= 3, "{ok:?}");
        assert_eq!(ok.last().map(|s| s.as_str()), Some("4"));
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_triggers_and_resync_enqueue() {
        let s = Arc::new(Scripted::default());
        let objs: Vec<Container> = (0..10).map(|i| obj(&format!("o{i}"), "1")).collect();
        s.lists.lock().unwrap().push_back(Ok((objs, "1".into())));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let calls: Log = Default::default();
        let (p, n, c) = (peak.clone(), now.clone(), calls.clone());
        let reconcile = move |o: Arc<Container>| {
            let (p, n, c) = (p.clone(), n.clone(), c.clone());
            async move {
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                c.lock().unwrap().push((o.metadata.name.clone(), String::new()));
                Ok::<_, SourceError>(Action::AwaitChange)
            }
        };
        let trigger = futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ObjectRef::new("default", "o3")
        });
        let cfg = Config { concurrency: 3, resync: Some(Duration::from_secs(20)), ..Default::default() };
        Controller::new(s, cfg).trigger(trigger).run(reconcile, tokio::time::sleep(Duration::from_secs(25))).await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let calls = calls.lock().unwrap();
        let count = |n: &str| calls.iter().filter(|(x, _)| x == n).count();
        // o3: initial + trigger + resync; the others: initial + resync.
        assert_eq!(count("o3"), 3);
        assert_eq!(count("o0"), 2);
        assert_eq!(calls.len(), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_reconciles_in_flight() {
        let s = Arc::new(Scripted::default());
        s.lists.lock().unwrap().push_back(Ok((vec![obj("slow", "1")], "1".into())));
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let reconcile = move |_: Arc<Container>| {
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok::<_, SourceError>(Action::Requeue(Duration::from_secs(1)))
            }
        };
        let start = tokio::time::Instant::now();
        Controller::new(s, Config::default()).run(reconcile, tokio::time::sleep(Duration::from_secs(1))).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1, "shutdown abandoned a reconcile in flight");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
