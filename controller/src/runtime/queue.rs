//! The work queue.
//!
//! - A key is queued at most once; adding it again keeps the earlier
//!   deadline (so a burst of events is one reconcile).
//! - A key being worked on is never handed out again until [`WorkQueue::done`];
//!   adding it meanwhile schedules one more run after it finishes, so no
//!   change is lost and one key never runs twice at once.
//! - [`WorkQueue::next`] waits until the earliest due key; one consumer
//!   (the controller's dispatcher) takes keys out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

struct State<K> {
    /// key → (deadline, tie-breaking sequence number)
    scheduled: HashMap<K, (Instant, u64)>,
    by_deadline: BTreeSet<(Instant, u64)>,
    by_seq: HashMap<u64, K>,
    running: HashSet<K>,
    /// Keys added while running: re-queued at `done` with this deadline.
    again: HashMap<K, Instant>,
    seq: u64,
    closed: bool,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                scheduled: HashMap::new(),
                by_deadline: BTreeSet::new(),
                by_seq: HashMap::new(),
                running: HashSet::new(),
                again: HashMap::new(),
                seq: 0,
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: K) {
        self.add_at(key, Instant::now());
    }

    pub fn add_after(&self, key: K, delay: Duration) {
        self.add_at(key, Instant::now() + delay);
    }

    /// Queues `key` for `at`, or earlier if it is already queued earlier.
    pub fn add_at(&self, key: K, at: Instant) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if st.running.contains(&key) {
            let e = st.again.entry(key).or_insert(at);
            *e = (*e).min(at);
            return;
        }
        Self::schedule(&mut st, key, at);
        drop(st);
        self.notify.notify_one();
    }

    fn schedule(st: &mut State<K>, key: K, at: Instant) {
        if let Some(&(old, seq)) = st.scheduled.get(&key) {
            if old <= at {
                return;
            }
            st.by_deadline.remove(&(old, seq));
            st.by_seq.remove(&seq);
        }
        st.seq += 1;
        let seq = st.seq;
        st.scheduled.insert(key.clone(), (at, seq));
        st.by_deadline.insert((at, seq));
        st.by_seq.insert(seq, key);
    }

    /// The next due key, marked running; `None` once shut down.
    pub async fn next(&self) -> Option<K> {
        loop {
            let wait_until = {
                let mut st = self.lock();
                if st.closed {
                    return None;
                }
                match st.by_deadline.first().copied() {
                    Some((at, seq)) if at <= Instant::now() => {
                        st.by_deadline.remove(&(at, seq));
                        let key = st.by_seq.remove(&seq)?;
                        st.scheduled.remove(&key);
                        st.running.insert(key.clone());
                        return Some(key);
                    }
                    Some((at, _)) => Some(at),
                    None => None,
                }
            };
            // `notify_one` stores a permit when nobody waits, so an add
            // between the unlock above and this wait is not missed.
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Marks `key` finished; if it was added while running, queues it again.
    pub fn done(&self, key: &K) {
        let mut st = self.lock();
        st.running.remove(key);
        if let Some(at) = st.again.remove(key) {
            if !st.closed {
                Self::schedule(&mut st, key.clone(), at);
                drop(st);
                self.notify.notify_one();
            }
        }
    }

    /// Stops handing out keys; `next` returns `None`.
    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Keys queued (not running).
    pub fn len(&self) -> usize {
        self.lock().scheduled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dedups_and_keeps_the_earliest_deadline() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(1));
        q.add_after("a", Duration::from_secs(5));
        q.add_after("b", Duration::from_secs(2));
        assert_eq!(q.len(), 2);
        let start = Instant::now();
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_key_is_not_handed_out_again_until_done() {
        let q = WorkQueue::new();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        // Added twice while running: one more run, after done.
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, Some("b"));
        let blocked = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(blocked.is_err(), "a was handed out while running");
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        assert!(tokio::time::timeout(Duration::from_secs(60), q.next()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_for_a_key_added_while_waiting_and_stops_on_shutdown() {
        let q = std::sync::Arc::new(WorkQueue::new());
        q.add_after("late", Duration::from_secs(100));
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add("now");
        assert_eq!(h.await.unwrap(), Some("now"));
        q.shutdown();
        assert_eq!(q.next().await, None);
        q.add("ignored");
        assert_eq!(q.len(), 1, "only `late` is left; adds after shutdown are dropped");
    }
}
