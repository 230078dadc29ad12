//! The single writer: group commit, then publish.
//!
//! The writer takes the first waiting command and every other write queued
//! behind it (up to `max_batch`), computes each write's outcome against the
//! committed state plus the batch's earlier writes, stores the whole batch
//! in one SQLite transaction (one fsync), and only then makes it visible:
//! the in-memory state, the watchers and the replies change together, under
//! the state lock, so a watch never sees a gap or a duplicate and a reply
//! is never sent for a write that is not durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Row, SqliteConnection};
use steward_schema::Time;
use tokio::sync::{mpsc, oneshot};

use crate::object::{Event, EventType, Key, Stored};
use crate::write::{self, Outcome, Write};
use crate::{Shared, State, StoreError, WriteResult};

pub(crate) struct Request {
    pub write: Write,
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

pub(crate) enum Command {
    // Boxed: a queued control command need not take a write's room.
    Write(Box<Request>),
    Control(Control),
}

pub(crate) enum Control {
    Compact(oneshot::Sender<Result<i64, StoreError>>),
    Shutdown(oneshot::Sender<()>),
}

/// SQLite's bound-parameter limit is 32766; stay well below it.
const ROWS_PER_STATEMENT: usize = 200;
/// 8 parameters a row: one statement holds a whole default batch (256).
const EVENTS_PER_STATEMENT: usize = 1000;

/// Objects changed since the last snapshot (None = deleted).
type Dirty = HashMap<Key, Option<Arc<Stored>>>;

/// Snapshot early when this many objects changed, to bound both the work
/// of one snapshot and the replay at the next start.
const SNAPSHOT_DIRTY_MAX: usize = 20_000;

pub(crate) async fn run(
    mut conn: SqliteConnection,
    checkpointer: SqliteConnection,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Command>,
    mut dirty: Dirty,
    mut snapshot_rv: i64,
) {
    let mut compact_tick = tokio::time::interval(shared.config.compact_interval);
    compact_tick.tick().await;
    let mut snapshot_tick = tokio::time::interval(shared.config.snapshot_interval);
    snapshot_tick.tick().await;
    let checkpoints = tokio::spawn(checkpoint_loop(checkpointer));
    let mut shutdown = None;
    // Set when a commit failed in a way that leaves the log's content in
    // doubt: then no write is taken until a restart.
    let mut poisoned = false;
    while shutdown.is_none() {
        let first = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => break,
            },
            _ = compact_tick.tick() => {
                if let Err(e) = compact(&mut conn, &shared, snapshot_rv).await {
                    tracing::warn!(error = %e, "event log compaction failed");
                }
                continue;
            }
            _ = snapshot_tick.tick() => {
                take_snapshot(&mut conn, &shared, &mut dirty, &mut snapshot_rv).await;
                continue;
            }
        };
        // Group every write already queued; a control command ends the group
        // and runs after it, in queue order.
        let mut batch = Vec::new();
        let mut control = None;
        match first {
            Command::Write(r) => batch.push(*r),
            Command::Control(c) => control = Some(c),
        }
        while batch.len() < shared.config.max_batch && control.is_none() {
            match rx.try_recv() {
                Ok(Command::Write(r)) => batch.push(*r),
                Ok(Command::Control(c)) => control = Some(c),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, &shared, batch, &mut dirty, &mut poisoned).await;
            if dirty.len() >= SNAPSHOT_DIRTY_MAX {
                take_snapshot(&mut conn, &shared, &mut dirty, &mut snapshot_rv).await;
            }
        }
        match control {
            Some(Control::Compact(reply)) => {
                take_snapshot(&mut conn, &shared, &mut dirty, &mut snapshot_rv).await;
                let _ = reply.send(compact(&mut conn, &shared, snapshot_rv).await);
            }
            Some(Control::Shutdown(reply)) => shutdown = Some(reply),
            None => {}
        }
    }
    // Drain what was queued before the shutdown request.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Write(r) = cmd {
            commit_batch(&mut conn, &shared, vec![*r], &mut dirty, &mut poisoned).await;
        }
    }
    shared.write().watchers.clear();
    checkpoints.abort();
    take_snapshot(&mut conn, &shared, &mut dirty, &mut snapshot_rv).await;
    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the store failed");
    }
    tracing::info!("store writer stopped");
    if let Some(reply) = shutdown {
        let _ = reply.send(());
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn commit_batch(conn: &mut SqliteConnection, shared: &Shared, batch: Vec<Request>, dirty: &mut Dirty, poisoned: &mut bool) {
    if *poisoned {
        for req in batch {
            let _ = req.reply.send(Err(StoreError::Internal(
                "an earlier commit failed with an unknown outcome; restart steward to recover from the log".into(),
            )));
        }
        return;
    }
    let base = shared.read().revision;
    let now = Time::now();
    let mut rev = base;
    let mut overlay: HashMap<Key, Option<Arc<Stored>>> = HashMap::new();
    let mut events: Vec<Event> = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for req in batch {
        let key = req.write.key().clone();
        let current = match overlay.get(&key) {
            Some(v) => v.clone(),
            None => shared.read().objects.get(&key).cloned(),
        };
        let result = write::apply(req.write, current.as_ref(), rev + 1, now, || uuid::Uuid::new_v4().to_string());
        let answer = match result {
            Ok(Outcome::Unchanged(object)) => Ok(WriteResult { object, event_type: None }),
            Ok(Outcome::Changed { event_type, object, prev }) => {
                if !req.dry_run {
                    rev += 1;
                    let after = (event_type != EventType::Deleted).then(|| object.clone());
                    overlay.insert(key, after);
                    events.push(Event { revision: rev, event_type, object: object.clone(), prev });
                }
                Ok(WriteResult { object, event_type: Some(event_type) })
            }
            Err(e) => Err(e),
        };
        replies.push((req.reply, answer));
    }
    if !events.is_empty() {
        if let Err(e) = persist(conn, &events).await {
            end_transaction(conn).await;
            // Nothing acknowledged after an error. If the log shows the
            // batch did not land, the store goes on; if it may have landed
            // (a failed fsync can leave rows visible but not durable), the
            // in-memory state can no longer be trusted to match the log:
            // refuse all writes until a restart replays the log.
            let stored: Option<i64> = sqlx::query("SELECT COALESCE(MAX(rv), 0) FROM events")
                .fetch_one(&mut *conn)
                .await
                .ok()
                .map(|r| r.get(0));
            if stored != Some(base) {
                tracing::error!(error = %e, ?stored, expected = base, "commit outcome unknown; refusing writes until restart");
                *poisoned = true;
            } else {
                tracing::error!(error = %e, "commit failed; failing the batch");
            }
            // Full only when nothing landed: "not stored" must be true.
            let (msg, full) = (e.to_string(), crate::is_disk_full(&e) && !*poisoned);
            for (reply, _) in replies {
                let err = if full { StoreError::Full(msg.clone()) } else { StoreError::Internal(format!("commit failed: {msg}")) };
                let _ = reply.send(Err(err));
            }
            return;
        }
        dirty.extend(overlay.iter().map(|(k, v)| (k.clone(), v.clone())));
        publish(shared, overlay, events, rev);
    }
    for (reply, answer) in replies {
        let _ = reply.send(answer);
    }
}

/// Appends the batch's events atomically: the only write on the commit
/// path, and an append (the event table is keyed by revision). A batch
/// that fits one statement needs no explicit transaction: a statement is
/// atomic, and that saves two round trips to SQLite's thread per commit.
async fn persist(conn: &mut SqliteConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    let ts = now_ms();
    let chunks: Vec<&[Event]> = events.chunks(EVENTS_PER_STATEMENT).collect();
    if let [only] = chunks.as_slice() {
        return insert_events(&mut *conn, only, ts).await;
    }
    let mut tx = conn.begin().await?;
    for chunk in chunks {
        insert_events(&mut tx, chunk, ts).await?;
    }
    tx.commit().await
}

async fn insert_events(conn: &mut SqliteConnection, chunk: &[Event], ts: i64) -> Result<(), sqlx::Error> {
    let mut sql = String::from("INSERT INTO events (rv, type, resource, namespace, name, data, ts, prev_rv) VALUES ");
    sql.push_str(&vec!["(?,?,?,?,?,?,?,?)"; chunk.len()].join(","));
    let mut q = sqlx::query(&sql);
    for e in chunk {
        let k = &e.object.key;
        q = q
            .bind(e.revision)
            .bind(e.event_type.as_str())
            .bind(k.resource.as_str())
            .bind(k.namespace.as_str())
            .bind(k.name.as_str())
            .bind(json_str(&e.object.json))
            .bind(ts)
            .bind(e.prev.as_ref().map(|p| p.revision));
    }
    q.execute(conn).await.map(|_| ())
}

/// Brings the objects table up to the current revision from the objects
/// changed since the last snapshot, in key order (neighbouring B-tree
/// pages), and records the revision it reflects.
async fn write_snapshot(conn: &mut SqliteConnection, dirty: &Dirty, revision: i64) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut upserts: Vec<&Arc<Stored>> = dirty.values().flatten().collect();
    upserts.sort_by(|a, b| a.key.cmp(&b.key));
    for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from("INSERT INTO objects (resource, namespace, name, rv, data) VALUES ");
        sql.push_str(&vec!["(?,?,?,?,?)"; chunk.len()].join(","));
        sql.push_str(" ON CONFLICT (resource, namespace, name) DO UPDATE SET rv = excluded.rv, data = excluded.data");
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q
                .bind(s.key.resource.as_str())
                .bind(s.key.namespace.as_str())
                .bind(s.key.name.as_str())
                .bind(s.revision)
                .bind(json_str(&s.json));
        }
        q.execute(&mut *tx).await?;
    }
    let deletes: Vec<&Key> = dirty.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
    for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from("DELETE FROM objects WHERE (resource, namespace, name) IN (VALUES ");
        sql.push_str(&vec!["(?,?,?)"; chunk.len()].join(","));
        sql.push(')');
        let mut q = sqlx::query(&sql);
        for k in chunk {
            q = q.bind(k.resource.as_str()).bind(k.namespace.as_str()).bind(k.name.as_str());
        }
        q.execute(&mut *tx).await?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ('snapshot', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(revision)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn take_snapshot(conn: &mut SqliteConnection, shared: &Shared, dirty: &mut Dirty, snapshot_rv: &mut i64) {
    if dirty.is_empty() {
        return;
    }
    // Only the writer changes state, so this revision covers `dirty` exactly.
    let revision = shared.read().revision;
    match write_snapshot(conn, dirty, revision).await {
        Ok(()) => {
            tracing::debug!(revision, objects = dirty.len(), "snapshot written");
            dirty.clear();
            *snapshot_rv = revision;
        }
        // The event log still has everything; try again next time.
        Err(e) => {
            tracing::warn!(error = %e, "snapshot failed");
            end_transaction(conn).await;
        }
    }
}

/// After a failed write: no transaction may stay open on the connection.
/// SQLite leaves one open after some errors (SQLITE_FULL in a statement of
/// an explicit transaction, whose automatic rollback is only of the
/// statement), and every later single-statement append would then land in
/// it, reported done but never committed nor synced: acknowledged writes
/// lost on a crash (found with a full disk and kill -9).
async fn end_transaction(conn: &mut SqliteConnection) {
    // "no transaction is active" is the good case.
    if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok() {
        tracing::warn!("rolled back a transaction a failed write left open");
    }
}

/// Copies committed WAL frames into the database file in the background
/// (PASSIVE never blocks the writer), so commits never pay for it.
async fn checkpoint_loop(mut conn: SqliteConnection) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            tracing::debug!(error = %e, "checkpoint");
        }
    }
}

fn json_str(b: &bytes::Bytes) -> &str {
    // The writer made these bytes with serde_json, so they are UTF-8.
    std::str::from_utf8(b).unwrap_or_default()
}

/// Makes a committed batch visible: state, revision and watchers change
/// together under the write lock.
fn publish(shared: &Shared, overlay: HashMap<Key, Option<Arc<Stored>>>, events: Vec<Event>, revision: i64) {
    let mut st = shared.write();
    let (keep, keep_bytes) = (shared.config.history_events, shared.config.history_bytes);
    if keep > 0 {
        for e in &events {
            st.history_bytes += State::history_cost(e);
            st.history.push_back(e.clone());
        }
        while st.history.len() > keep || (st.history_bytes > keep_bytes && st.history.len() > 1) {
            if let Some(old) = st.history.pop_front() {
                st.history_bytes -= State::history_cost(&old);
            }
        }
    }
    for (k, v) in overlay {
        match v {
            Some(o) => {
                st.objects.insert(k, o);
            }
            None => {
                st.objects.remove(&k);
            }
        }
    }
    st.revision = revision;
    let buffer = shared.config.watch_buffer;
    let max_bytes = shared.config.watch_buffer_bytes;
    st.watchers.retain(|w| {
        for e in events.iter().filter(|e| e.object.key.resource == w.resource) {
            let size = e.object.json.len();
            // Undelivered bytes, bounded as well as undelivered events: a
            // few thousand large objects must not pile up per watcher.
            if w.bytes.fetch_add(size, Ordering::SeqCst) + size > max_bytes {
                tracing::warn!(resource = %w.resource, max_bytes, "watcher too slow (bytes); ending it");
                w.overflowed.store(true, Ordering::SeqCst);
                return false;
            }
            match w.tx.try_send(e.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(resource = %w.resource, buffer, "watcher too slow; ending it");
                    w.overflowed.store(true, Ordering::SeqCst);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    });
}

/// Deletes events outside the retention window; returns the oldest
/// revision a watch can still start from. Never past the snapshot: the
/// events after it are how the objects table catches up at the next start.
async fn compact(conn: &mut SqliteConnection, shared: &Shared, snapshot_rv: i64) -> Result<i64, StoreError> {
    let retention = &shared.config.retention;
    let (revision, compacted) = {
        let st = shared.read();
        (st.revision, st.compacted)
    };
    let by_count = revision - retention.max_events;
    let age_cut = now_ms() - retention.max_age.as_millis() as i64;
    let by_age: i64 = sqlx::query("SELECT COALESCE(MAX(rv), 0) FROM events WHERE ts < ?")
        .bind(age_cut)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    let cut = by_count.max(by_age).min(revision).min(snapshot_rv);
    if cut <= compacted {
        return Ok(compacted);
    }
    let mut tx = conn.begin().await?;
    let deleted = sqlx::query("DELETE FROM events WHERE rv <= ?").bind(cut).execute(&mut *tx).await?.rows_affected();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('compacted', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(cut)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    shared.write().compacted = cut;
    tracing::debug!(compacted = cut, deleted, "event log compacted");
    Ok(cut)
}
