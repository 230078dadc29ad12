//! Image pulls, shared and outside the reconcile slots.
//!
//! One pull per image reference is in flight at a time, in a task of its
//! own. A reconcile that needs an image asks [`Pulls::poll`]: it gets the
//! result if a pull it waited for has finished, and otherwise registers
//! as a waiter and returns at once (status `ImagePulling` with progress),
//! freeing its slot for containers whose images are there. When the pull
//! ends (success or error) every waiter is woken through the stream
//! [`Pulls::new`] returns, which the controller takes as a trigger.
//!
//! So twelve containers of one uncached image fetch each blob once, and no
//! two pulls of one image race on containerd's content ingest lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use steward_schema::{PullPolicy, Time};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::actual::{ImageConfig, PullProgress, Runtime, RuntimeError};
use crate::runtime::ObjectRef;

/// A finished pull nobody came back for, or a failure nobody asked about
/// again, is forgotten after this.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// After a failed pull of an image, no new pull of it before this; doubled
/// after each further failure up to [`PULL_BACKOFF_MAX`] (the kubelet's
/// image pull backoff). A success, or a spec change of an object that needs
/// it, starts over.
pub const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What a reconcile learns about its image.
#[derive(Debug)]
pub enum PullState {
    /// The pull it waited for succeeded.
    Pulled(ImageConfig),
    /// Still pulling (it is registered and will be woken).
    Pulling(PullProgress),
    /// The last pull of the image failed, and the next one waits for the
    /// backoff to pass: no pull is started.
    Failed(PullFailure),
}

/// The last failed pull of an image, and when the next may start.
#[derive(Clone, Debug)]
pub struct PullFailure {
    pub error: RuntimeError,
    /// The backoff that failure started.
    pub backoff: Duration,
    /// When the next pull may start (wall clock, for the status message).
    pub retry_at: Time,
    /// How long until then (zero: a pull starts at the next ask).
    pub retry_in: Duration,
    /// The asker waited for the failed pull and learns of it now (the
    /// kubelet's `ErrImagePull`); later asks are told it is backing off
    /// (`ImagePullBackOff`).
    pub fresh: bool,
}

struct Entry {
    progress: watch::Receiver<PullProgress>,
    /// Set when the pull finished, with when.
    result: Option<(Result<ImageConfig, RuntimeError>, Instant)>,
    /// Objects that asked while it ran; each gets the result once.
    waiters: HashSet<ObjectRef>,
}

struct Failure {
    error: RuntimeError,
    backoff: Duration,
    /// When it failed, and so when the next pull may start (`at + backoff`).
    at: Instant,
    retry_at: Time,
}

impl Failure {
    fn view(&self, now: Instant, fresh: bool) -> PullFailure {
        PullFailure {
            error: self.error.clone(),
            backoff: self.backoff,
            retry_at: self.retry_at,
            retry_in: (self.at + self.backoff).saturating_duration_since(now),
            fresh,
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// The last failure per image, kept after its pull's entry is gone:
    /// what stops a failing pull from being retried at once.
    failures: HashMap<String, Failure>,
}

pub struct Pulls<R> {
    runtime: Arc<R>,
    state: Arc<Mutex<State>>,
    wake: mpsc::UnboundedSender<ObjectRef>,
    backoff: (Duration, Duration),
}

impl<R: Runtime> Pulls<R> {
    /// The pulls, and the stream of objects to reconcile again because the
    /// pull they wait for finished.
    pub fn new(runtime: Arc<R>) -> (Self, BoxStream<'static, ObjectRef>) {
        Self::with_backoff(runtime, PULL_BACKOFF_INITIAL, PULL_BACKOFF_MAX)
    }

    /// [`Pulls::new`] with another failed-pull backoff (`initial` doubling
    /// to `max`).
    pub fn with_backoff(runtime: Arc<R>, initial: Duration, max: Duration) -> (Self, BoxStream<'static, ObjectRef>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) }).boxed();
        (Pulls { runtime, state: Default::default(), wake, backoff: (initial, max.max(initial)) }, stream)
    }

    /// Whether a pull of `image` is running now.
    pub fn is_pulling(&self, image: &str) -> bool {
        self.lock().entries.get(&image_key(image)).is_some_and(|e| e.result.is_none())
    }

    /// How many pulls are running now.
    pub fn in_flight(&self) -> usize {
        self.lock().entries.values().filter(|e| e.result.is_none()).count()
    }

    /// How many objects are registered as waiting for a pull of `image`
    /// (running or finished and not yet collected).
    pub fn waiters(&self, image: &str) -> usize {
        self.lock().entries.get(&image_key(image)).map_or(0, |e| e.waiters.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `who` no longer needs a pull of `image` (it found the image
    /// present): it leaves the pull's waiters, so the pull's result is not
    /// kept for it.
    pub fn forget(&self, image: &str, who: &ObjectRef) {
        let key = image_key(image);
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(&key) {
            e.waiters.remove(who);
            if e.result.is_some() && e.waiters.is_empty() {
                st.entries.remove(&key);
            }
        }
    }

    /// Forgets the failures of `image`: the next ask pulls at once (the
    /// spec of an object that needs it changed).
    pub fn reset_backoff(&self, image: &str) {
        self.lock().failures.remove(&image_key(image));
    }

    /// `who` needs `image` pulled (per `policy`): the result of the pull it
    /// waited for, the progress of the one running (starting it if none
    /// is), or, while a failed pull's backoff lasts, that failure. Never
    /// waits for the pull.
    pub fn poll(&self, image: &str, policy: PullPolicy, who: &ObjectRef) -> PullState {
        let key = image_key(image);
        let now = Instant::now();
        let mut st = self.lock();
        st.entries.retain(|_, e| e.result.as_ref().is_none_or(|(_, at)| now.duration_since(*at) < FORGET_AFTER));
        st.failures.retain(|_, f| now.duration_since(f.at + f.backoff) < FORGET_AFTER);
        if let Some(e) = st.entries.get_mut(&key) {
            match &e.result {
                None => {
                    e.waiters.insert(who.clone());
                    return PullState::Pulling(*e.progress.borrow());
                }
                Some((result, _)) if e.waiters.remove(who) => {
                    let result = result.clone();
                    if e.waiters.is_empty() {
                        st.entries.remove(&key);
                    }
                    return match result {
                        Ok(cfg) => PullState::Pulled(cfg),
                        Err(error) => match st.failures.get(&key) {
                            Some(f) => PullState::Failed(f.view(now, true)),
                            // Its backoff was reset since: told once all the same.
                            None => PullState::Failed(PullFailure {
                                error,
                                backoff: Duration::ZERO,
                                retry_at: Time::now(),
                                retry_in: Duration::ZERO,
                                fresh: true,
                            }),
                        },
                    };
                }
                // Finished before this one asked: its result is not this
                // one's word (a later pull may succeed, or the image may be
                // gone again).
                Some(_) => {}
            }
        }
        if let Some(f) = st.failures.get(&key) {
            if now < f.at + f.backoff {
                return PullState::Failed(f.view(now, false));
            }
        }
        let (tx, rx) = watch::channel(PullProgress::default());
        st.entries.insert(key.clone(), Entry { progress: rx, result: None, waiters: HashSet::from([who.clone()]) });
        drop(st);
        let runtime = self.runtime.clone();
        let all = self.state.clone();
        let wake = self.wake.clone();
        let (initial, max) = self.backoff;
        let image = image.to_string();
        tracing::info!(%image, "pulling (shared by every container that needs it)");
        tokio::spawn(async move {
            let result = runtime
                .ensure_image(&image, policy, Box::new(move |p| {
                    let _ = tx.send(p);
                }))
                .await;
            let now = Instant::now();
            let waiters: Vec<ObjectRef> = {
                let mut st = all.lock().unwrap_or_else(|p| p.into_inner());
                match &result {
                    Ok(_) => {
                        st.failures.remove(&key);
                    }
                    Err(e) => {
                        let backoff = st.failures.get(&key).map_or(initial, |f| (f.backoff * 2).min(max));
                        let retry_at = Time(chrono::Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default());
                        tracing::warn!(%image, error = %e, backoff_s = backoff.as_secs(), "pull failed");
                        st.failures.insert(key.clone(), Failure { error: e.clone(), backoff, at: now, retry_at });
                    }
                }
                match st.entries.get_mut(&key) {
                    Some(e) => {
                        e.result = Some((result, now));
                        e.waiters.iter().cloned().collect()
                    }
                    None => Vec::new(),
                }
            };
            for w in waiters {
                let _ = wake.send(w);
            }
        });
        PullState::Pulling(PullProgress::default())
    }
}

/// One key per image, however it is spelled (`busybox` =
/// `docker.io/library/busybox:latest`).
fn image_key(image: &str) -> String {
    crate::containerd::registry::Reference::parse(image).map(|r| r.full_name()).unwrap_or_else(|_| image.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use futures_util::future::BoxFuture;
    use steward_schema::ContainerSpec;

    use super::*;
    use crate::actual::{ActualContainer, LogOwner};

    /// Pulls fail (or succeed, once told to) and are counted; nothing else
    /// of a runtime is used by [`Pulls`].
    #[derive(Default)]
    struct Puller {
        pulls: AtomicU32,
        succeed: AtomicBool,
    }

    fn unused<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, RuntimeError>> {
        Box::pin(async { Err(RuntimeError::Unavailable("not used by pulls".into())) })
    }

    impl Runtime for Puller {
        fn list(&self) -> BoxFuture<'_, Result<Vec<ActualContainer>, RuntimeError>> {
            unused()
        }
        fn find<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<ActualContainer>, RuntimeError>> {
            unused()
        }
        fn ensure_image<'a>(
            &'a self,
            image: &'a str,
            _: PullPolicy,
            _: Box<dyn Fn(PullProgress) + Send + Sync + 'a>,
        ) -> BoxFuture<'a, Result<ImageConfig, RuntimeError>> {
            self.pulls.fetch_add(1, Ordering::SeqCst);
            let ok = self.succeed.load(Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(ImageConfig::default())
                } else {
                    Err(RuntimeError::ImagePull(format!("pull {image}: manifest unknown")))
                }
            })
        }
        fn create<'a>(&'a self, _: &'a str, _: &'a ContainerSpec, _: &'a ImageConfig, _: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn start<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<u32, RuntimeError>> {
            unused()
        }
        fn kill<'a>(&'a self, _: &'a str, _: u32, _: bool) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn mark_stopping<'a>(&'a self, _: &'a str, _: Time) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn update_labels<'a>(&'a self, _: &'a str, _: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn resize<'a>(&'a self, _: &'a str, _: &'a ContainerSpec, _: BTreeMap<String, String>) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn delete_task<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn remove<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn remove_logs<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
            unused()
        }
        fn log_owners(&self) -> BoxFuture<'_, Result<Vec<LogOwner>, RuntimeError>> {
            unused()
        }
        fn events(&self) -> BoxStream<'static, String> {
            futures_util::stream::empty().boxed()
        }
    }

    const IMAGE: &str = "127.0.0.1:5000/busybox:nosuchtag";

    /// Asks as a reconcile would whenever it is triggered, `rounds` times in
    /// a row (a storm of triggers must not mean a storm of pulls).
    fn ask(p: &Pulls<Puller>, who: &ObjectRef, rounds: usize) -> Vec<PullState> {
        (0..rounds).map(|_| p.poll(IMAGE, PullPolicy::IfNotPresent, who)).collect()
    }

    fn failed(s: &PullState) -> &PullFailure {
        match s {
            PullState::Failed(f) => f,
            other => panic!("want Failed, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pull_backs_off_doubling_and_a_success_resets() {
        let rt = Arc::new(Puller::default());
        let (p, mut woken) = Pulls::new(rt.clone());
        let who = ObjectRef::new("default", "nope");
        assert!(matches!(p.poll(IMAGE, PullPolicy::IfNotPresent, &who), PullState::Pulling(_)));
        assert_eq!(woken.next().await, Some(who.clone()));
        // The waiter learns of the failure once (ErrImagePull), then every
        // ask is told of the backoff: no new pull however often it asks.
        let states = ask(&p, &who, 50);
        let f = failed(&states[0]);
        assert!(f.fresh && f.backoff == PULL_BACKOFF_INITIAL && f.retry_in == PULL_BACKOFF_INITIAL, "{f:?}");
        assert!(f.error.to_string().contains("manifest unknown"));
        assert!(states[1..].iter().all(|s| !failed(s).fresh));
        assert_eq!(rt.pulls.load(Ordering::SeqCst), 1);
        assert_eq!(p.waiters(IMAGE), 0, "the failed pull's entry outlived its last waiter");

        // Another object asking meanwhile pulls nothing either.
        let other = ObjectRef::new("default", "other");
        assert!(!failed(&p.poll(IMAGE, PullPolicy::IfNotPresent, &other)).fresh);
        tokio::time::advance(Duration::from_secs(9)).await;
        let f = failed(&ask(&p, &who, 1)[0]).clone();
        assert_eq!(f.retry_in, Duration::from_secs(1));
        assert_eq!(rt.pulls.load(Ordering::SeqCst), 1);

        // The window over: exactly one new pull, and 20 s next.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulling(_)));
        assert!(matches!(ask(&p, &other, 1)[0], PullState::Pulling(_)), "a second object joins the running pull");
        // Both waiters are woken, in no particular order.
        let mut both = vec![woken.next().await, woken.next().await];
        both.sort_by_key(|o| o.as_ref().map(|o| o.name.clone()));
        assert_eq!(both, [Some(who.clone()), Some(other.clone())]);
        let f = failed(&ask(&p, &who, 1)[0]).clone();
        assert!(f.fresh && f.backoff == Duration::from_secs(20), "{f:?}");
        assert!(failed(&ask(&p, &other, 1)[0]).fresh, "each waiter is told once");
        assert_eq!(rt.pulls.load(Ordering::SeqCst), 2);

        // Doubling stops at the maximum.
        for want in [40, 80, 160, 300, 300] {
            tokio::time::advance(failed(&ask(&p, &who, 1)[0]).retry_in).await;
            assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulling(_)));
            woken.next().await;
            assert_eq!(failed(&ask(&p, &who, 1)[0]).backoff, Duration::from_secs(want));
        }
        assert_eq!(rt.pulls.load(Ordering::SeqCst), 7);

        // A spec change starts over: a pull at once.
        p.reset_backoff(IMAGE);
        assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulling(_)));
        woken.next().await;
        assert_eq!(failed(&ask(&p, &who, 1)[0]).backoff, PULL_BACKOFF_INITIAL);

        // A success forgets the failures.
        rt.succeed.store(true, Ordering::SeqCst);
        tokio::time::advance(PULL_BACKOFF_INITIAL).await;
        assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulling(_)));
        woken.next().await;
        assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulled(_)));
        rt.succeed.store(false, Ordering::SeqCst);
        assert!(matches!(ask(&p, &who, 1)[0], PullState::Pulling(_)));
        woken.next().await;
        assert_eq!(failed(&ask(&p, &who, 1)[0]).backoff, PULL_BACKOFF_INITIAL);
    }

    /// A waiter that finds the image present (pulled by someone else) leaves
    /// the pull's waiters: the finished pull's result is not kept for it.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_finds_the_image_leaves_the_pull() {
        let rt = Arc::new(Puller { succeed: AtomicBool::new(true), ..Default::default() });
        let (p, mut woken) = Pulls::new(rt.clone());
        let (a, b) = (ObjectRef::new("default", "a"), ObjectRef::new("default", "b"));
        assert!(matches!(p.poll(IMAGE, PullPolicy::IfNotPresent, &a), PullState::Pulling(_)));
        assert!(matches!(p.poll(IMAGE, PullPolicy::IfNotPresent, &b), PullState::Pulling(_)));
        woken.next().await;
        woken.next().await;
        assert!(matches!(p.poll(IMAGE, PullPolicy::IfNotPresent, &a), PullState::Pulled(_)));
        assert_eq!(p.waiters(IMAGE), 1);
        p.forget(IMAGE, &b);
        assert_eq!(p.waiters(IMAGE), 0);
        // Gone: b's next ask (say the image was removed since) pulls anew.
        assert!(matches!(p.poll(IMAGE, PullPolicy::IfNotPresent, &b), PullState::Pulling(_)));
        assert_eq!(woken.next().await, Some(b.clone()));
        assert_eq!(rt.pulls.load(Ordering::SeqCst), 2);
    }
}
