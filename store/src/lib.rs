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
    /// The requested revision is newer than the store's: it was not
    /// handed out by this store (a forged continue token or watch
    /// resourceVersion).
    #[error("too large resource version: {requested}, current: {current}")]
    TooNew { requested: i64, current: i64 },
    /// A watcher fell too far behind live writes and was ended.
    #[error("watch ended: the watcher fell more than {0} behind; relist and watch again")]
    TooSlow(String),
    /// The object as it would be stored is larger than [`MAX_OBJECT_BYTES`].
    #[error("{} {:?} is too large: {size} bytes as stored, more than the limit of {limit} bytes", key.resource, key.name)]
    TooLarge { key: Key, size: usize, limit: usize },
    /// The writer's queue is full: the caller should retry shortly.
    #[error("the store is busy (its write queue is full); retry shortly")]
    Busy,
    #[error("the store is shutting down")]
    Closed,
    /// The store's disk is full: the write was not stored; it may succeed
    /// once space returns.
    #[error("the store's disk is full ({0}): the write was not stored; free space in steward's data dir and retry")]
    Full(String),
    #[error("storage error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Internal(e.to_string())
    }
}

/// SQLITE_FULL (13, and its extended codes): no space for the database,
/// its journal or a temporary file.
pub(crate) fn is_disk_full(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code()).and_then(|c| c.parse::<i64>().ok());
    code.is_some_and(|c| c & 0xff == 13)
}

/// Largest object the store keeps, as serialised JSON (etcd's and so
/// Kubernetes' default request limit): a larger write is `TooLarge`.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Hard ceiling on a stored object: system writes (status, deletion,
/// finalizer changes) may grow an object past [`MAX_OBJECT_BYTES`] up to
/// this, so that they never fail on the cap for an object a client was
/// allowed to write.
pub const MAX_STORED_BYTES: usize = MAX_OBJECT_BYTES + 256 * 1024;

/// Deepest nesting of arrays and objects a stored object may have (the
/// object itself is level 1): a deeper write is `Invalid`. Well below
/// serde_json's recursion limit (128), so every row the store writes can
/// be read back.
pub const MAX_DEPTH: usize = 64;

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
    /// Bytes (of serialised objects) a watcher may have undelivered before
    /// it is ended.
    pub watch_buffer_bytes: usize,
    /// Recent events kept in memory with the object before each change:
    /// they let selector watches resumed from a recent revision decide
    /// visibility from the previous object, and paged lists be served at
    /// their first page's revision.
    pub history_events: usize,
    /// Bytes of objects the in-memory history may hold (each event counts
    /// its object and the previous one): a bound on what repeated large
    /// writes can pin in memory.
    pub history_bytes: usize,
    /// Writes that may wait for the writer; more get `Busy`.
    pub write_queue: usize,
    /// Most writes grouped into one transaction.
    pub max_batch: usize,
    /// How often the objects table (the snapshot the event log is replayed
    /// onto at start) is brought up to date.
    pub snapshot_interval: Duration,
    /// The identity to record if the store has none yet: one an older
    /// steward kept outside the store (`DATA/store-uid`), adopted once.
    /// Ignored when the store has its identity already, or when empty.
    pub adopt_uid: Option<String>,
}

impl Config {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            retention: Retention::default(),
            compact_interval: Duration::from_secs(10),
            watch_buffer: 10_000,
            watch_buffer_bytes: 64 << 20,
            history_events: 10_000,
            history_bytes: 64 << 20,
            write_queue: 4096,
            max_batch: 256,
            snapshot_interval: Duration::from_secs(2),
            adopt_uid: None,
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
    /// The last `history_events` committed events, consecutive revisions,
    /// oldest first (only since this process opened the store).
    pub history: std::collections::VecDeque<Event>,
    /// What `history` holds, counted as [`State::history_cost`].
    pub history_bytes: usize,
}

impl State {
    pub fn history_cost(e: &Event) -> usize {
        e.object.json.len() + e.prev.as_ref().map_or(0, |p| p.json.len())
    }

    /// The in-memory event at `revision`, if still kept.
    pub fn history_at(&self, revision: i64) -> Option<&Event> {
        let first = self.history.front()?.revision;
        let i = usize::try_from(revision.checked_sub(first)?).ok()?;
        self.history.get(i)
    }
}

pub(crate) struct Shared {
    /// The store's identity (meta `uid`), made when the store was created.
    pub uid: String,
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
        namespace TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, ts INTEGER NOT NULL,
        prev_rv INTEGER)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    // Rows that could not be decoded at open: kept for an operator, never
    // read by the store.
    "CREATE TABLE IF NOT EXISTS quarantine (
        source TEXT NOT NULL, rv INTEGER NOT NULL, resource TEXT NOT NULL, namespace TEXT NOT NULL,
        name TEXT NOT NULL, data TEXT NOT NULL, error TEXT NOT NULL, ts INTEGER NOT NULL)",
];

/// Decodes a stored row. serde_json's recursion limit (128) is above
/// [`MAX_DEPTH`], so a row this store wrote always decodes.
fn decode_row(key: Key, data: &str) -> Result<Arc<Stored>, String> {
    let object: Object = serde_json::from_str(data).map_err(|e| e.to_string())?;
    Stored::new(key, object).map_err(|e| e.to_string())
}

/// What opening the store makes of one row.
pub(crate) enum Decoded {
    Ok(Arc<Stored>),
    /// Readable once its `metadata.ownerReferences` (free-form before they
    /// were typed) are dropped: kept, and the original quarantined.
    Salvaged(Arc<Stored>, String),
    Bad(String),
}

pub(crate) fn decode_or_salvage(key: Key, data: &str) -> Decoded {
    let error = match decode_row(key.clone(), data) {
        Ok(s) => return Decoded::Ok(s),
        Err(e) => e,
    };
    // The references are cut from the text, not from a parsed value: they
    // may nest deeper than serde_json's recursion limit (128).
    let salvaged = without_owner_references(data).and_then(|text| {
        let object: Object = serde_json::from_str(&text).ok()?;
        Stored::new(key, object).ok()
    });
    match salvaged {
        Some(s) => Decoded::Salvaged(s, error),
        None => Decoded::Bad(error),
    }
}

/// `data` (a JSON object) without its `metadata.ownerReferences` member,
/// found by one pass that tracks strings, escapes and nesting; `None` when
/// there is none.
fn without_owner_references(data: &str) -> Option<String> {
    let b = data.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    // The key of the member being read at each depth (1 = top level).
    let mut in_metadata = false;
    let mut last_string: Option<(usize, usize)> = None;
    // Where the current member of the metadata object starts (after `{` or `,`).
    let mut member_start = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, i + 1));
            }
            b':' => {
                let (s, e) = last_string.take()?;
                let name = &data[s..e];
                if depth == 1 {
                    in_metadata = name == "\"metadata\"";
                } else if depth == 2 && in_metadata && name == "\"ownerReferences\"" {
                    let end = value_end(b, i + 1)?;
                    // Drop the member and one adjacent comma.
                    let mut out = String::with_capacity(data.len());
                    let after = data[end..].trim_start();
                    if let Some(rest) = after.strip_prefix(',') {
                        out.push_str(&data[..member_start]);
                        out.push_str(rest);
                    } else {
                        let before = data[..member_start].trim_end();
                        out.push_str(before.strip_suffix(',').unwrap_or(before));
                        out.push_str(after);
                    }
                    return Some(out);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 2 {
                    member_start = i + 1;
                }
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 2 => member_start = i + 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where the JSON value starting at or after `i` ends (exclusive).
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Copies an undecodable row into the quarantine table, so that opening
/// the store never fails on one object.
async fn quarantine(
    conn: &mut sqlx::SqliteConnection,
    source: &str,
    rv: i64,
    key: &Key,
    data: &str,
    error: &str,
) -> Result<(), StoreError> {
    tracing::error!(%key, rv, source, error, "undecodable row skipped and copied to the quarantine table");
    sqlx::query("INSERT INTO quarantine (source, rv, resource, namespace, name, data, error, ts) VALUES (?,?,?,?,?,?,?,?)")
        .bind(source)
        .bind(rv)
        .bind(key.resource.as_str())
        .bind(key.namespace.as_str())
        .bind(key.name.as_str())
        .bind(data)
        .bind(error)
        .bind(writer::now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Makes `path` readable by its owner only (0600), creating it empty when
/// missing, and tightens it (with a warning) when it is looser.
#[cfg(unix)]
fn owner_only(path: &std::path::Path, create: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Internal(format!("{}: {e}", path.display()));
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "store file readable by others; setting 0600");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    Ok(())
}

#[cfg(not(unix))]
fn owner_only(_: &std::path::Path, _: bool) -> Result<(), StoreError> {
    Ok(())
}

/// The store file and SQLite's companions (`-wal`, `-shm`).
fn store_files(path: &std::path::Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

impl Store {
    /// Opens (creating if needed) the store at `config.path`, loads the
    /// latest snapshot of every object and replays the event log after it,
    /// then starts the writer task.
    pub async fn open(config: Config) -> Result<Store, StoreError> {
        // SQLite gives -wal and -shm the mode of the database file: create
        // it owner-only (it holds every spec and env value).
        for (i, f) in store_files(&config.path).iter().enumerate() {
            owner_only(f, i == 0)?;
        }
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
        // Stores made before events recorded their previous version.
        let has_prev: i64 = sqlx::query("SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'prev_rv'")
            .fetch_one(&mut conn)
            .await?
            .get(0);
        if has_prev == 0 {
            sqlx::query("ALTER TABLE events ADD COLUMN prev_rv INTEGER").execute(&mut conn).await?;
        }
        // The store's identity: made once, when the store is created (or
        // adopted from an older steward's file), and kept with the data,
        // so a restored or moved store keeps it.
        let uid: String = match sqlx::query("SELECT CAST(value AS TEXT) FROM meta WHERE key = 'uid'").fetch_optional(&mut conn).await? {
            Some(row) => row.get(0),
            None => {
                let uid = config
                    .adopt_uid
                    .as_deref()
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
                sqlx::query("INSERT INTO meta (key, value) VALUES ('uid', ?)").bind(&uid).execute(&mut conn).await?;
                tracing::info!(store_uid = %uid, adopted = config.adopt_uid.is_some(), "recorded the store's identity");
                uid
            }
        };
        if uid.trim().is_empty() {
            return Err(StoreError::Internal("the store's identity (meta uid) is empty".into()));
        }
        let meta = |k: &'static str| sqlx::query("SELECT value FROM meta WHERE key = ?").bind(k);
        let snapshot: i64 = meta("snapshot").fetch_optional(&mut conn).await?.map(|r| r.get(0)).unwrap_or(0);
        let compacted: i64 = meta("compacted").fetch_optional(&mut conn).await?.map(|r| r.get(0)).unwrap_or(0);
        let mut objects = BTreeMap::new();
        let mut dirty = std::collections::HashMap::new();
        for row in sqlx::query("SELECT resource, namespace, name, data, rv FROM objects").fetch_all(&mut conn).await? {
            let key = Key::new(row.get(0), row.get(1), row.get(2));
            let data: String = row.get(3);
            match decode_or_salvage(key.clone(), &data) {
                Decoded::Ok(stored) => {
                    objects.insert(key, stored);
                }
                Decoded::Salvaged(stored, e) => {
                    quarantine(&mut conn, "objects (kept without ownerReferences)", row.get(4), &key, &data, &e).await?;
                    // The next snapshot rewrites the row readable.
                    dirty.insert(key.clone(), Some(stored.clone()));
                    objects.insert(key, stored);
                }
                Decoded::Bad(e) => {
                    quarantine(&mut conn, "objects", row.get(4), &key, &data, &e).await?;
                    sqlx::query("DELETE FROM objects WHERE resource = ? AND namespace = ? AND name = ?")
                        .bind(key.resource.as_str())
                        .bind(key.namespace.as_str())
                        .bind(key.name.as_str())
                        .execute(&mut conn)
                        .await?;
                }
            }
        }
        // Every write after the snapshot is in the event log (compaction
        // never passes the snapshot): replay it.
        let mut revision = snapshot.max(compacted);
        let rows = sqlx::query("SELECT rv, type, resource, namespace, name, data FROM events WHERE rv > ? ORDER BY rv")
            .bind(snapshot)
            .fetch_all(&mut conn)
            .await?;
        for row in rows {
            let rv: i64 = row.get(0);
            let key = Key::new(row.get(2), row.get(3), row.get(4));
            let data: String = row.get(5);
            revision = revision.max(rv);
            let stored = match decode_or_salvage(key.clone(), &data) {
                Decoded::Ok(s) => s,
                Decoded::Salvaged(s, e) => {
                    quarantine(&mut conn, "events (kept without ownerReferences)", rv, &key, &data, &e).await?;
                    s
                }
                Decoded::Bad(e) => {
                    // The event stays in the log (revisions stay
                    // consecutive); watches skip it too.
                    quarantine(&mut conn, "events", rv, &key, &data, &e).await?;
                    continue;
                }
            };
            let ty: String = row.get(1);
            let after = (ty != EventType::Deleted.as_str()).then_some(stored);
            match &after {
                Some(s) => objects.insert(key.clone(), s.clone()),
                None => objects.remove(&key),
            };
            dirty.insert(key, after);
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().create_if_missing(false).read_only(true))
            .await?;
        let checkpointer = opts.clone().create_if_missing(false).connect().await?;
        for f in store_files(&config.path) {
            owner_only(&f, false)?;
        }
        tracing::info!(
            path = %config.path.display(), objects = objects.len(), revision, snapshot, replayed = dirty.len(), compacted,
            "store opened"
        );
        let shared = Arc::new(Shared {
            uid,
            state: RwLock::new(State { objects, revision, compacted, watchers: Vec::new(), history: Default::default(), history_bytes: 0 }),
            config,
            readers,
        });
        let (tx, rx) = mpsc::channel(shared.config.write_queue.max(1));
        tokio::spawn(writer::run(conn, checkpointer, shared.clone(), rx, dirty, snapshot));
        Ok(Store { shared, commands: tx })
    }

    /// Performs one write. With `dry_run` the result is computed exactly as
    /// for a real write, but nothing is stored.
    pub async fn write(&self, write: Write, dry_run: bool) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        // A full queue answers at once (the API turns it into 429 and
        // Retry-After) instead of piling up waiting requests.
        self.commands
            .try_send(writer::Command::Write(Box::new(writer::Request { write, dry_run, reply })))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Busy,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Stored>> {
        self.shared.read().objects.get(key).cloned()
    }

    /// The current revision.
    /// The store's identity: made once with the store, the same at every
    /// open, never empty. Containers created for its objects carry it.
    pub fn uid(&self) -> &str {
        &self.shared.uid
    }

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

    /// As [`Store::list`], but as the objects were at `revision` (a page
    /// after the first of a paged list): the current objects with every
    /// change after `revision` undone from the in-memory history. `Expired`
    /// when that history no longer reaches back to `revision`.
    pub fn list_at(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: usize,
        revision: i64,
        filter: impl Fn(&Stored) -> bool,
    ) -> Result<ListPage, StoreError> {
        use std::ops::Bound;
        let st = self.shared.read();
        if revision > st.revision {
            return Err(StoreError::TooNew { requested: revision, current: st.revision });
        }
        if revision == st.revision {
            drop(st);
            return Ok(self.list(resource, namespace, after, limit, filter));
        }
        let oldest = st.history.front().map_or(st.revision, |e| e.revision - 1);
        if revision < oldest {
            return Err(StoreError::Expired { requested: revision, oldest });
        }
        let in_range = |k: &Key| {
            k.resource == resource
                && namespace.is_none_or(|ns| ns == k.namespace)
                && after.is_none_or(|a| k > a)
        };
        // Each changed key's state at `revision` is the state before its
        // earliest change after it: walk newest to oldest, last one wins.
        let mut then: BTreeMap<&Key, Option<&Arc<Stored>>> = BTreeMap::new();
        for e in st.history.iter().rev().take_while(|e| e.revision > revision) {
            if in_range(&e.object.key) {
                let before = if e.event_type == EventType::Added { None } else { e.prev.as_ref() };
                then.insert(&e.object.key, before);
            }
        }
        let start = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(Key::new(resource, namespace.unwrap_or(""), "")),
        };
        let mut current = st
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| ns == k.namespace))
            .filter(|(k, _)| !then.contains_key(k))
            .peekable();
        let mut undone = then.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).peekable();
        let mut items = Vec::new();
        let mut next = None;
        // Both are in key order and disjoint: merge them, lazily, so a page
        // costs its size and the changes since `revision`, not the list.
        loop {
            let take_current = match (current.peek(), undone.peek()) {
                (Some(c), Some(u)) => c.0 < u.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let v = if take_current { current.next().map(|(_, v)| v) } else { undone.next().map(|(_, v)| v) };
            let Some(v) = v else { break };
            if !filter(v) {
                continue;
            }
            if limit > 0 && items.len() == limit {
                next = items.last().map(|s: &Arc<Stored>| s.key.clone());
                break;
            }
            items.push(v.clone());
        }
        Ok(ListPage { items, revision, next })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that finds the writer's queue full is answered `Busy` at once.
    #[tokio::test]
    async fn a_full_write_queue_answers_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
        // A queue of one that nobody drains: the first write waits in it.
        let (tx, _rx) = mpsc::channel(1);
        let stalled = Store { shared: store.shared.clone(), commands: tx };
        let obj = || Object {
            api_version: "v".into(),
            kind: "K".into(),
            metadata: Default::default(),
            spec: serde_json::Value::Null,
            status: None,
            rest: Default::default(),
        };
        let first = tokio::spawn({
            let s = stalled.clone();
            async move { s.write(Write::Create { key: Key::new("r", "n", "a"), object: obj() }, false).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stalled.commands.capacity() > 0 {
            assert!(std::time::Instant::now() < deadline, "the first write never queued");
            tokio::task::yield_now().await;
        }
        let second = stalled.write(Write::Create { key: Key::new("r", "n", "b"), object: obj() }, false).await;
        assert!(matches!(second, Err(StoreError::Busy)), "{second:?}");
        first.abort();
    }
}
