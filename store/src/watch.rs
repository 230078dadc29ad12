//! Watches: replay from the event log, then live events, with no gap and
//! no duplicate (etcd's unsynced → synced hand-over).
//!
//! A watch registers for live events and notes the current revision C
//! under the same lock the writer publishes under. Everything after C
//! arrives live; everything in (R, C] is committed in the event log and is
//! replayed from it first. Live events wait in a bounded channel meanwhile;
//! a watcher that lets it fill is ended with `TooSlow`, never buffered
//! without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::mpsc;

use crate::object::{Event, EventType, Key, Stored};
use crate::{Shared, StoreError};

const REPLAY_BATCH: i64 = 1000;

pub(crate) struct Slot {
    pub resource: String,
    pub tx: mpsc::Sender<Event>,
    pub overflowed: Arc<AtomicBool>,
    /// Bytes sent to `tx` and not yet received.
    pub bytes: Arc<AtomicUsize>,
}

/// A stream of the changes to one resource; see [`crate::Store::watch`].
pub struct Watch {
    shared: Arc<Shared>,
    resource: String,
    pending: VecDeque<Event>,
    /// Replay covers (replay_next - 1, replay_end].
    replay_next: i64,
    replay_end: i64,
    /// Events at or below this revision are not delivered (a watch from a
    /// revision ahead of the store).
    skip_through: i64,
    rx: mpsc::Receiver<Event>,
    overflowed: Arc<AtomicBool>,
    bytes: Arc<AtomicUsize>,
}

pub(crate) fn start(shared: &Arc<Shared>, resource: &str, from: Option<i64>) -> Result<Watch, StoreError> {
    let (tx, rx) = mpsc::channel(shared.config.watch_buffer.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicUsize::new(0));
    let mut st = shared.write();
    let current = st.revision;
    if let Some(r) = from {
        if r < st.compacted {
            return Err(StoreError::Expired { requested: r, oldest: st.compacted });
        }
        if r > current {
            return Err(StoreError::TooNew { requested: r, current });
        }
    }
    let pending: VecDeque<Event> = match from {
        Some(_) => VecDeque::new(),
        None => st
            .objects
            .range(Key::new(resource, "", "")..)
            .take_while(|(k, _)| k.resource == resource)
            .map(|(_, o)| Event { revision: o.revision, event_type: EventType::Added, object: o.clone(), prev: None })
            .collect(),
    };
    st.watchers.push(Slot { resource: resource.into(), tx, overflowed: overflowed.clone(), bytes: bytes.clone() });
    drop(st);
    let start = from.unwrap_or(current);
    Ok(Watch {
        shared: shared.clone(),
        resource: resource.into(),
        pending,
        replay_next: start.min(current) + 1,
        replay_end: current,
        skip_through: start,
        rx,
        overflowed,
        bytes,
    })
}

impl Watch {
    /// The next change, `None` when the store shuts down, or an error
    /// (`Expired` when history was compacted mid-replay, `TooSlow`) after
    /// which the watch is over.
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.replay_next <= self.replay_end {
                if let Err(e) = self.replay_batch().await {
                    self.replay_end = 0;
                    self.rx.close();
                    return Some(Err(e));
                }
                continue;
            }
            let received = self.rx.recv().await;
            if let Some(e) = &received {
                self.bytes.fetch_sub(e.object.json.len(), Ordering::SeqCst);
            }
            match received {
                Some(e) if e.revision <= self.skip_through => continue,
                Some(e) => return Some(Ok(e)),
                None if self.overflowed.load(Ordering::SeqCst) => {
                    self.overflowed.store(false, Ordering::SeqCst);
                    let c = &self.shared.config;
                    return Some(Err(StoreError::TooSlow(format!(
                        "{} events or {} bytes",
                        c.watch_buffer, c.watch_buffer_bytes
                    ))));
                }
                None => return None,
            }
        }
    }

    /// The revision a BOOKMARK may carry now: the store's revision when this
    /// watch has nothing undelivered, else `None`.
    pub fn bookmark(&self) -> Option<i64> {
        if !self.pending.is_empty() || self.replay_next <= self.replay_end {
            return None;
        }
        let st = self.shared.read();
        // Under the read lock no event can be published, so an empty
        // channel means every change up to `revision` has been delivered.
        (self.rx.is_empty() && !self.rx.is_closed()).then_some(st.revision.max(self.skip_through))
    }

    async fn replay_batch(&mut self) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT rv, type, resource, namespace, name, data, prev_rv FROM events WHERE rv >= ? AND rv <= ? ORDER BY rv LIMIT ?")
            .bind(self.replay_next)
            .bind(self.replay_end)
            .bind(REPLAY_BATCH)
            .fetch_all(&self.shared.readers)
            .await?;
        let shared = self.shared.clone();
        let expired = |next: i64| StoreError::Expired {
            requested: next - 1,
            oldest: shared.read().compacted,
        };
        if rows.is_empty() {
            return Err(expired(self.replay_next));
        }
        // Each event with the revision of its previous version, when that
        // is still to be read (from the log, for events older than the
        // in-memory history): it decides selector visibility.
        let mut from_log: Vec<(Event, Option<i64>)> = Vec::new();
        for row in rows {
            let rv: i64 = row.get(0);
            // One event per revision: a gap means compaction got there first.
            if rv != self.replay_next {
                return Err(expired(self.replay_next));
            }
            self.replay_next = rv + 1;
            let resource: String = row.get(2);
            if resource != self.resource {
                continue;
            }
            let key = Key::new(&resource, row.get(3), row.get(4));
            let data: String = row.get(5);
            let ty: String = row.get(1);
            let event_type = EventType::parse(&ty).ok_or_else(|| StoreError::Internal(format!("bad event type {ty:?} at revision {rv}")))?;
            // Recent events are still in memory, with the previous object
            // that decides selector visibility.
            let kept = self.shared.read().history_at(rv).cloned();
            if let Some(e) = kept {
                from_log.push((e, None));
                continue;
            }
            let object = match crate::decode_or_salvage(key.clone(), &data) {
                crate::Decoded::Ok(o) | crate::Decoded::Salvaged(o, _) => o,
                crate::Decoded::Bad(e) => {
                    // Quarantined at open; not deliverable.
                    tracing::error!(%key, rv, error = %e, "undecodable event skipped");
                    continue;
                }
            };
            from_log.push((Event { revision: rv, event_type, object, prev: None }, row.get(6)));
        }
        let wanted: Vec<i64> = from_log.iter().filter_map(|(_, p)| *p).collect();
        let prevs = previous_versions(&self.shared, &self.resource, &wanted).await?;
        for (mut e, prev_rv) in from_log {
            if let Some(p) = prev_rv {
                e.prev = prevs.get(&p).cloned();
            }
            self.pending.push_back(e);
        }
        Ok(())
    }
}

/// The objects written at `revisions`, from the event log, or from the
/// snapshot table when that version is the one it holds. A version found
/// in neither (compacted and since overwritten) is left out: the caller
/// treats it as unknown.
async fn previous_versions(shared: &Shared, resource: &str, revisions: &[i64]) -> Result<HashMap<i64, Arc<Stored>>, StoreError> {
    let mut found = HashMap::new();
    for chunk in revisions.chunks(500) {
        let mut sql = String::from("SELECT rv, resource, namespace, name, data FROM events WHERE rv IN (");
        sql.push_str(&vec!["?"; chunk.len()].join(","));
        sql.push_str(") UNION ALL SELECT rv, resource, namespace, name, data FROM objects WHERE resource = ? AND rv IN (");
        sql.push_str(&vec!["?"; chunk.len()].join(","));
        sql.push(')');
        let mut q = sqlx::query(&sql);
        for rv in chunk {
            q = q.bind(rv);
        }
        q = q.bind(resource);
        for rv in chunk {
            q = q.bind(rv);
        }
        for row in q.fetch_all(&shared.readers).await? {
            let rv: i64 = row.get(0);
            let key = Key::new(row.get(1), row.get(2), row.get(3));
            let data: String = row.get(4);
            if let crate::Decoded::Ok(o) | crate::Decoded::Salvaged(o, _) = crate::decode_or_salvage(key, &data) {
                found.insert(rv, o);
            }
        }
    }
    Ok(found)
}
