//! steward's durable object store.
//!
//! Owns persistence and the revision history: SQLite (WAL,
//! `synchronous=FULL`) through sqlx, one global revision per write,
//! optimistic concurrency, generation, finalizer-aware deletion, an event
//! log for watch replay with compaction, and live watches.
//!
//! Every write goes through one writer task ([`writer`]) that groups the
//! writes waiting at that moment into one transaction (group commit), so
//! one fsync acknowledges many writes. A commit appends to the event log
//! only (sequential pages); the objects table is a snapshot brought up to
//! date every few seconds and on shutdown, and opening the store replays
//! the log after it, as etcd does with its WAL and snapshots. Committed
//! objects are also kept in memory, so reads and lists never touch SQLite;
//! watches replay older history from the event log, then follow live
//! writes.
//!
//! It knows nothing of HTTP or of any kind's spec: validation belongs to
//! `steward-schema`, request handling to `steward-apiserver`.

mod object;
mod watch;
pub mod write;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row};
use tokio::sync::{mpsc, oneshot};

pub use object::{Event, EventType, Key, Object, Stored};
pub use watch::Watch;
pub use write::Write;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{} {:?} not found", key.resource, key.name)]
    NotFound { key: Key },
    #[error("{} {:?} already exists", key.resource, key.name)]
    AlreadyExists { key: Key },
    #[error("Operation cannot be fulfilled on {} {:?}: {message}", key.resource, key.name)]
    Conflict { key: Key, message: String },
    #[error("{} {:?} is invalid: {field}: {message}", key.resource, key.name)]
    Invalid { key: Key, field: String, message: String },
    /// The requested revision is older than the retained event log.
    #[error("too old resource version: {requested} (oldest retained: {oldest})")]
    Expired { requested: i64, oldest: i64 },
    /// A watcher fell too far behind live writes and was ended.
    #[error("watch ended: the watcher fell more than {0} events behind; relist and watch again")]
    TooSlow(usize),
    #[error("the store is shutting down")]
    Closed,
    #[error("storage error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

/// How much of the event log to keep. Older revisions cannot be watched
/// from (they get `Expired`, and the client relists).
#[derive(Clone, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_events: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(600),
            max_events: 100_000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The SQLite file.
    pub path: PathBuf,
    pub retention: Retention,
    /// How often the writer compacts the event log.
    pub compact_interval: Duration,
    /// Events a watcher may have undelivered before it is ended.
    pub watch_buffer: usize,
    /// Most writes grouped into one transaction.
    pub max_batch: usize,
    /// How often the objects table (the snapshot the event log is replayed
    /// onto at start) is brought up to date.
    pub snapshot_interval: Duration,
}

impl Config {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            retention: Retention::default(),
            compact_interval: Duration::from_secs(10),
            watch_buffer: 10_000,
            max_batch: 256,
            snapshot_interval: Duration::from_secs(2),
        }
    }
}

/// The answer to a write.
#[derive(Clone, Debug)]
pub struct WriteResult {
    /// The object after the write (for a delete, its last state).
    pub object: Arc<Stored>,
    /// `None` when the write changed nothing (no revision, no event).
    pub event_type: Option<EventType>,
}

/// In-memory view of committed state; changed only by the writer, after
/// its transaction committed.
pub(crate) struct State {
    pub objects: BTreeMap<Key, Arc<Stored>>,
    pub revision: i64,
    pub compacted: i64,
    pub watchers: Vec<watch::Slot>,
}

pub(crate) struct Shared {
    pub state: RwLock<State>,
    pub config: Config,
    pub readers: SqlitePool,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    commands: mpsc::Sender<writer::Command>,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Arc<Stored>>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// Where the next page starts, when there is one.
    pub next: Option<Key>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS objects (
        resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        rv INTEGER NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS events (
        rv INTEGER PRIMARY KEY, type TEXT NOT NULL, resource TEXT NOT NULL,
        namespace TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, ts INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
];

impl Store {
    /// Opens (creating if needed) the store at `config.path`, loads the
    /// latest snapshot of every object and replays the event log after it,
    /// then starts the writer task.
    pub async fn open(config: Config) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run on their own connection, off the commit path.
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864")
            .pragma("cache_size", "-16000")
            .log_statements(tracing::log::LevelFilter::Trace);
        let mut conn = opts.connect().await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&mut conn).await?;
        }
        let corrupt = |what: String, e: serde_json::Error| StoreError::Internal(format!("corrupt {what} in {}: {e}", config.path.display()));
        let meta = |k: &'static str| sqlx::query("SELECT value FROM meta WHERE key = ?").bind(k);
        let snapshot: i64 = meta("snapshot").fetch_optional(&mut conn).await?.map(|r| r.get(0)).unwrap_or(0);
        let compacted: i64 = meta("compacted").fetch_optional(&mut conn).await?.map(|r| r.get(0)).unwrap_or(0);
        let mut objects = BTreeMap::new();
        for row in sqlx::query("SELECT resource, namespace, name, data FROM objects").fetch_all(&mut conn).await? {
            let key = Key::new(row.get(0), row.get(1), row.get(2));
            let data: String = row.get(3);
            let object: Object = serde_json::from_str(&data).map_err(|e| corrupt(format!("object {key}"), e))?;
            let stored = Stored::new(key.clone(), object).map_err(|e| StoreError::Internal(e.to_string()))?;
            objects.insert(key, stored);
        }
        // Every write after the snapshot is in the event log (compaction
        // never passes the snapshot): replay it.
        let mut dirty = std::collections::HashMap::new();
        let mut revision = snapshot.max(compacted);
        let rows = sqlx::query("SELECT rv, type, resource, namespace, name, data FROM events WHERE rv > ? ORDER BY rv")
            .bind(snapshot)
            .fetch_all(&mut conn)
            .await?;
        for row in rows {
            let rv: i64 = row.get(0);
            let key = Key::new(row.get(2), row.get(3), row.get(4));
            let data: String = row.get(5);
            let object: Object = serde_json::from_str(&data).map_err(|e| corrupt(format!("event {rv}"), e))?;
            let stored = Stored::new(key.clone(), object).map_err(|e| StoreError::Internal(e.to_string()))?;
            let ty: String = row.get(1);
            let after = (ty != EventType::Deleted.as_str()).then_some(stored);
            match &after {
                Some(s) => objects.insert(key.clone(), s.clone()),
                None => objects.remove(&key),
            };
            dirty.insert(key, after);
            revision = revision.max(rv);
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().create_if_missing(false).read_only(true))
            .await?;
        let checkpointer = opts.clone().create_if_missing(false).connect().await?;
        tracing::info!(
            path = %config.path.display(), objects = objects.len(), revision, snapshot, replayed = dirty.len(), compacted,
            "store opened"
        );
        let shared = Arc::new(Shared {
            state: RwLock::new(State { objects, revision, compacted, watchers: Vec::new() }),
            config,
            readers,
        });
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer::run(conn, checkpointer, shared.clone(), rx, dirty, snapshot));
        Ok(Store { shared, commands: tx })
    }

    /// Performs one write. With `dry_run` the result is computed exactly as
    /// for a real write, but nothing is stored.
    pub async fn write(&self, write: Write, dry_run: bool) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(writer::Command::Write(Box::new(writer::Request { write, dry_run, reply })))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Stored>> {
        self.shared.read().objects.get(key).cloned()
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.shared.read().revision
    }

    /// The oldest revision a watch can start from.
    pub fn compacted_revision(&self) -> i64 {
        self.shared.read().compacted
    }

    /// Number of live watchers.
    pub fn watchers(&self) -> usize {
        self.shared.read().watchers.len()
    }

    pub fn object_count(&self) -> usize {
        self.shared.read().objects.len()
    }

    /// Lists objects of `resource` (in `namespace`, or all), in key order,
    /// starting after `after`, keeping those `filter` accepts, at most
    /// `limit` of them (0 = no limit).
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: usize,
        filter: impl Fn(&Stored) -> bool,
    ) -> ListPage {
        use std::ops::Bound;
        let st = self.shared.read();
        let start = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(Key::new(resource, namespace.unwrap_or(""), "")),
        };
        let mut items = Vec::new();
        let mut next = None;
        for (k, v) in st.objects.range((start, Bound::Unbounded)) {
            if k.resource != resource || namespace.is_some_and(|ns| ns != k.namespace) {
                break;
            }
            if !filter(v) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next = items.last().map(|s: &Arc<Stored>| s.key.clone());
                break;
            }
            items.push(v.clone());
        }
        ListPage { items, revision: st.revision, next }
    }

    /// Starts a watch of `resource`. With `from = Some(R)` it delivers every
    /// change after revision R, in order; with `None`, first the current
    /// objects as `Added`, then every later change.
    pub fn watch(&self, resource: &str, from: Option<i64>) -> Result<Watch, StoreError> {
        watch::start(&self.shared, resource, from)
    }

    /// Compacts the event log now, per the retention; returns the new
    /// oldest watchable revision.
    pub async fn compact(&self) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(writer::Command::Control(writer::Control::Compact(reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes every queued write, ends every watch, and closes the file.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(writer::Command::Control(writer::Control::Shutdown(reply))).await.is_ok() {
            let _ = rx.await;
        }
        self.shared.readers.close().await;
    }
}
