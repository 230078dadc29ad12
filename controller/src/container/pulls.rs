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
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use steward_schema::PullPolicy;
use tokio::sync::{mpsc, watch};

use crate::actual::{ImageConfig, PullProgress, Runtime, RuntimeError};
use crate::runtime::ObjectRef;

/// A finished pull nobody came back for is forgotten after this.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What a reconcile learns about its image.
#[derive(Debug)]
pub enum PullState {
    /// The pull it waited for finished.
    Done(Result<ImageConfig, RuntimeError>),
    /// Still pulling (it is registered and will be woken).
    Pulling(PullProgress),
}

struct Entry {
    progress: watch::Receiver<PullProgress>,
    /// Set when the pull finished, with when.
    result: Option<(Result<ImageConfig, RuntimeError>, Instant)>,
    /// Objects that asked while it ran; each gets the result once.
    waiters: HashSet<ObjectRef>,
}

pub struct Pulls<R> {
    runtime: Arc<R>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    wake: mpsc::UnboundedSender<ObjectRef>,
}

impl<R: Runtime> Pulls<R> {
    /// The pulls, and the stream of objects to reconcile again because the
    /// pull they wait for finished.
    pub fn new(runtime: Arc<R>) -> (Self, BoxStream<'static, ObjectRef>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) }).boxed();
        (Pulls { runtime, entries: Default::default(), wake }, stream)
    }

    /// Whether a pull of `image` is running now.
    pub fn is_pulling(&self, image: &str) -> bool {
        self.lock().get(&image_key(image)).is_some_and(|e| e.result.is_none())
    }

    /// How many pulls are running now.
    pub fn in_flight(&self) -> usize {
        self.lock().values().filter(|e| e.result.is_none()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `who` needs `image` pulled (per `policy`): the result of the pull it
    /// waited for, or the progress of the one running (starting it if none
    /// is). Never waits for the pull.
    pub fn poll(&self, image: &str, policy: PullPolicy, who: &ObjectRef) -> PullState {
        let key = image_key(image);
        let mut entries = self.lock();
        entries.retain(|_, e| e.result.as_ref().is_none_or(|(_, at)| at.elapsed() < FORGET_AFTER));
        if let Some(e) = entries.get_mut(&key) {
            match &e.result {
                None => {
                    e.waiters.insert(who.clone());
                    return PullState::Pulling(*e.progress.borrow());
                }
                Some((result, _)) if e.waiters.remove(who) => {
                    let result = result.clone();
                    if e.waiters.is_empty() {
                        entries.remove(&key);
                    }
                    return PullState::Done(result);
                }
                // Finished before this one asked: its result is not this
                // one's word (a later pull may succeed, or the image may be
                // gone again). Pull anew.
                Some(_) => {}
            }
        }
        let (tx, rx) = watch::channel(PullProgress::default());
        entries.insert(key.clone(), Entry { progress: rx, result: None, waiters: HashSet::from([who.clone()]) });
        drop(entries);
        let runtime = self.runtime.clone();
        let all = self.entries.clone();
        let wake = self.wake.clone();
        let image = image.to_string();
        tracing::info!(%image, "pulling (shared by every container that needs it)");
        tokio::spawn(async move {
            let result = runtime
                .ensure_image(&image, policy, Box::new(move |p| {
                    let _ = tx.send(p);
                }))
                .await;
            if let Err(e) = &result {
                tracing::warn!(%image, error = %e, "pull failed");
            }
            let waiters: Vec<ObjectRef> = {
                let mut entries = all.lock().unwrap_or_else(|p| p.into_inner());
                match entries.get_mut(&key) {
                    Some(e) => {
                        e.result = Some((result, Instant::now()));
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
