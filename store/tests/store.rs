//! The store against a real SQLite file.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use steward_store::{Config, EventType, Key, Object, Store, StoreError, Write};

fn obj(name: &str, image: &str) -> Object {
    let mut o = Object {
        api_version: "steward.dev/v1alpha1".into(),
        kind: "Container".into(),
        metadata: Default::default(),
        spec: json!({ "image": image }),
        status: None,
        rest: Default::default(),
    };
    o.metadata.name = name.into();
    o
}

fn key(name: &str) -> Key {
    Key::new("containers", "default", name)
}

async fn create(store: &Store, name: &str) -> i64 {
    let r = store.write(Write::Create { key: key(name), object: obj(name, "a") }, false).await.unwrap();
    r.object.revision
}

#[tokio::test]
async fn writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(Config::new(&path)).await.unwrap();
    for i in 0..10 {
        create(&store, &format!("c{i}")).await;
    }
    let mut o = store.get(&key("c3")).unwrap().object.clone();
    o.spec = json!({"image": "b"});
    store.write(Write::Update { key: key("c3"), object: o }, false).await.unwrap();
    store.write(Write::Delete { key: key("c4"), resource_version: String::new(), uid: String::new(), grace_period_seconds: None }, false).await.unwrap();
    let rev = store.revision();
    assert_eq!(rev, 12);
    store.shutdown().await;

    let store = Store::open(Config::new(&path)).await.unwrap();
    assert_eq!(store.revision(), rev);
    assert_eq!(store.object_count(), 9);
    let c3 = store.get(&key("c3")).unwrap();
    assert_eq!(c3.object.spec, json!({"image": "b"}));
    assert_eq!(c3.object.metadata.generation, 2);
    assert!(store.get(&key("c4")).is_none());
    // A watch from 0 replays all 12 revisions from the event log.
    let mut w = store.watch("containers", Some(0)).unwrap();
    let mut revs = Vec::new();
    for _ in 0..12 {
        revs.push(w.next().await.unwrap().unwrap().revision);
    }
    assert_eq!(revs, (1..=12).collect::<Vec<_>>());
    store.shutdown().await;
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    let r = store.write(Write::Create { key: key("x"), object: obj("x", "a") }, true).await.unwrap();
    assert_eq!(r.event_type, Some(EventType::Added));
    assert_eq!(store.revision(), 0);
    assert!(store.get(&key("x")).is_none());
}

/// Many writers race many watchers that start at different revisions while
/// writes are in flight: each watcher must see exactly the revisions after
/// its start, in order, with the objects the store committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_handover_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 150;
    let total = (WRITERS * PER_WRITER) as i64;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_WRITER {
                let name = format!("w{w}-{}", i % 20);
                let r = if i < 20 {
                    store.write(Write::Create { key: key(&name), object: obj(&name, "a") }, false).await
                } else {
                    let mut o = obj(&name, &format!("img{i}"));
                    o.metadata.name = name.clone();
                    store.write(Write::Update { key: key(&name), object: o }, false).await
                };
                acked.push(r.unwrap().object.revision);
            }
            acked
        }));
    }
    // Watchers start at whatever revision the store is at, while writes race.
    let mut watchers = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        watchers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            let from = store.revision();
            let mut w = store.watch("containers", Some(from)).unwrap();
            let mut seen = Vec::new();
            while seen.len() < (total - from) as usize {
                let e = tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("watch stalled").unwrap().unwrap();
                assert_eq!(e.object.revision, e.revision);
                seen.push(e.revision);
            }
            (from, seen)
        }));
    }
    let mut all_acked = HashSet::new();
    for w in writers {
        for r in w.await.unwrap() {
            assert!(all_acked.insert(r), "revision {r} acknowledged twice");
        }
    }
    assert_eq!(all_acked.len() as i64, total);
    assert_eq!(store.revision(), total);
    for w in watchers {
        let (from, seen) = w.await.unwrap();
        let expected: Vec<i64> = (from + 1..=total).collect();
        assert_eq!(seen, expected, "watcher from {from}");
    }
}

#[tokio::test]
async fn watch_from_compacted_revision_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("s.db"));
    cfg.retention.max_events = 5;
    let store = Store::open(cfg).await.unwrap();
    for i in 0..20 {
        create(&store, &format!("c{i}")).await;
    }
    assert_eq!(store.compact().await.unwrap(), 15);
    match store.watch("containers", Some(3)) {
        Err(StoreError::Expired { requested: 3, oldest: 15 }) => {}
        other => panic!("expected Expired, got {:?}", other.err()),
    }
    let mut w = store.watch("containers", Some(15)).unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 16);
}

#[tokio::test]
async fn slow_watcher_is_ended_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("s.db"));
    cfg.watch_buffer = 10;
    let store = Store::open(cfg).await.unwrap();
    let mut slow = store.watch("containers", Some(0)).unwrap();
    let mut fast = store.watch("containers", Some(0)).unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(_)) = fast.next().await {
            n += 1;
            if n == 50 {
                break;
            }
        }
        n
    });
    for i in 0..50 {
        create(&store, &format!("c{i}")).await;
    }
    assert_eq!(reader.await.unwrap(), 50);
    // The next write notices the fast watcher has gone; the slow one was cut.
    create(&store, "last").await;
    assert_eq!(store.watchers(), 0, "the slow watcher was not cut");
    let mut got = 0;
    loop {
        match slow.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(StoreError::TooSlow(_))) => break,
            other => panic!("expected TooSlow, got {other:?}"),
        }
    }
    assert!(got <= 10, "buffered {got} events beyond the bound");
}

#[tokio::test]
async fn watch_without_revision_starts_with_current_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    create(&store, "a").await;
    create(&store, "b").await;
    let mut w = store.watch("containers", None).unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    let e2 = w.next().await.unwrap().unwrap();
    assert_eq!((e1.event_type, e1.object.key.name.as_str()), (EventType::Added, "a"));
    assert_eq!((e2.event_type, e2.object.key.name.as_str()), (EventType::Added, "b"));
    assert_eq!(w.bookmark(), Some(2));
    create(&store, "c").await;
    assert_eq!(w.bookmark(), None);
    let e3 = w.next().await.unwrap().unwrap();
    assert_eq!(e3.revision, 3);
}

/// A second store opened on the same file while the first has written but
/// not yet snapshotted (as after a crash) rebuilds the same state from the
/// snapshot plus the event log.
#[tokio::test]
async fn open_replays_the_event_log_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut cfg = Config::new(&path);
    cfg.snapshot_interval = Duration::from_secs(3600);
    let store = Store::open(cfg.clone()).await.unwrap();
    for i in 0..5 {
        create(&store, &format!("c{i}")).await;
    }
    // Snapshot now (compact takes one), then change more without one.
    store.compact().await.unwrap();
    let mut o = store.get(&key("c1")).unwrap().object.clone();
    o.spec = json!({"image": "new"});
    store.write(Write::Update { key: key("c1"), object: o }, false).await.unwrap();
    store.write(Write::Delete { key: key("c2"), resource_version: String::new(), uid: String::new(), grace_period_seconds: None }, false).await.unwrap();
    create(&store, "c9").await;

    let other = Store::open(cfg).await.unwrap();
    assert_eq!(other.revision(), store.revision());
    assert_eq!(other.object_count(), 5);
    assert_eq!(other.get(&key("c1")).unwrap().object.spec, json!({"image": "new"}));
    assert!(other.get(&key("c2")).is_none());
    assert_eq!(other.get(&key("c9")).unwrap().object.metadata.uid, store.get(&key("c9")).unwrap().object.metadata.uid);
}

#[tokio::test]
async fn watcher_buffer_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("s.db"));
    // Plenty of events, but room for only a few 10 KB objects.
    cfg.watch_buffer = 10_000;
    cfg.watch_buffer_bytes = 50_000;
    let store = Store::open(cfg).await.unwrap();
    let mut slow = store.watch("containers", Some(0)).unwrap();
    for i in 0..20 {
        let mut o = obj(&format!("c{i}"), "a");
        o.metadata.annotations.insert("pad".into(), "x".repeat(10_000));
        store.write(Write::Create { key: key(&format!("c{i}")), object: o }, false).await.unwrap();
    }
    assert_eq!(store.watchers(), 0, "the watcher was not cut by its byte bound");
    let mut got = 0;
    loop {
        match slow.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(StoreError::TooSlow(m))) => {
                assert!(m.contains("50000 bytes"), "{m}");
                break;
            }
            other => panic!("expected TooSlow, got {other:?}"),
        }
    }
    assert!(got <= 5, "buffered {got} events of 10 KB beyond a 50 KB bound");
}

#[tokio::test]
async fn every_write_is_checked_for_size_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    create(&store, "a").await;
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    // Spec (update), status (status write) and create are all refused.
    let mut o = store.get(&key("a")).unwrap().object.clone();
    o.spec = json!({"image": "a", "x": deep});
    let e = store.write(Write::Update { key: key("a"), object: o }, false).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid { message, .. } if message.contains("limit of 64")), "{e:?}");
    let status = Write::UpdateStatus { key: key("a"), status: Some(json!({"x": deep})), resource_version: String::new() };
    assert!(matches!(store.write(status, false).await, Err(StoreError::Invalid { .. })));
    let mut big = obj("b", "a");
    big.spec = json!({"image": "a", "pad": "x".repeat(steward_store::MAX_OBJECT_BYTES)});
    let e = store.write(Write::Create { key: key("b"), object: big }, false).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { limit: steward_store::MAX_OBJECT_BYTES, .. }), "{e:?}");
    let big_status = Write::UpdateStatus {
        key: key("a"),
        status: Some(json!({"pad": "y".repeat(steward_store::MAX_STORED_BYTES)})),
        resource_version: String::new(),
    };
    assert!(matches!(store.write(big_status, false).await, Err(StoreError::TooLarge { .. })));
    // Just under the depth limit is fine, and reopens.
    let mut ok = json!(1);
    for _ in 0..(steward_store::MAX_DEPTH - 2) {
        ok = json!([ok]);
    }
    let mut o = store.get(&key("a")).unwrap().object.clone();
    o.spec = json!({"image": "a", "x": ok});
    store.write(Write::Update { key: key("a"), object: o }, false).await.unwrap();
    store.shutdown().await;
    let again = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    assert_eq!(again.object_count(), 1);
}

/// A row that cannot be decoded (here: nested 242 deep, as an older
/// steward could write) is quarantined, and the store still opens.
#[tokio::test]
async fn open_quarantines_an_undecodable_row() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(Config::new(&path)).await.unwrap();
    create(&store, "good").await;
    create(&store, "bad").await;
    create(&store, "late").await;
    store.shutdown().await;

    let deep = format!("{}1{}", "[".repeat(240), "]".repeat(240));
    let data = format!(
        r#"{{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{{"name":"bad","resourceVersion":"2"}},"spec":{{"x":{deep}}}}}"#
    );
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    // In the snapshot and in the event log.
    let n = sqlx::query("UPDATE objects SET data = ? WHERE name = 'bad'").bind(&data).execute(&mut conn).await.unwrap();
    assert_eq!(n.rows_affected(), 1);
    sqlx::query("UPDATE meta SET value = 0 WHERE key = 'snapshot'").execute(&mut conn).await.unwrap();
    sqlx::query("UPDATE events SET data = ? WHERE rv = 2").bind(&data).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    let store = Store::open(Config::new(&path)).await.expect("the store must open despite a bad row");
    assert!(store.get(&key("good")).is_some());
    assert!(store.get(&key("late")).is_some());
    assert!(store.get(&key("bad")).is_none());
    assert_eq!(store.revision(), 3);
    // A watch replaying the log skips it too.
    let mut w = store.watch("containers", Some(0)).unwrap();
    let names: Vec<String> = vec![w.next().await.unwrap().unwrap(), w.next().await.unwrap().unwrap()]
        .into_iter()
        .map(|e| e.object.key.name.clone())
        .collect();
    assert_eq!(names, ["good", "late"]);
    store.shutdown().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let q: Vec<String> = sqlx::query("SELECT source FROM quarantine WHERE name = 'bad' ORDER BY source")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(q, ["events", "objects"]);
}

#[cfg(unix)]
#[tokio::test]
async fn store_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = |p: &std::path::Path| ["", "-wal", "-shm"].map(|s| std::path::PathBuf::from(format!("{}{s}", p.display())));
    let store = Store::open(Config::new(&path)).await.unwrap();
    create(&store, "a").await;
    for f in files(&path) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    store.shutdown().await;
    // An existing file with a looser mode is tightened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(Config::new(&path)).await.unwrap();
    create(&store, "b").await;
    for f in files(&path) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// Later pages of a paged list are served at the first page's revision.
#[tokio::test]
async fn list_at_an_older_revision_undoes_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::new(dir.path().join("s.db"))).await.unwrap();
    for n in ["a", "b", "c", "d"] {
        create(&store, n).await;
    }
    let first = store.list("containers", None, None, 2, |_| true);
    assert_eq!(first.revision, 4);
    let next = first.next.clone().unwrap();
    // Changes after the first page: c changed, d deleted, e created.
    let mut o = store.get(&key("c")).unwrap().object.clone();
    o.spec = json!({"image": "changed"});
    store.write(Write::Update { key: key("c"), object: o }, false).await.unwrap();
    store.write(Write::Delete { key: key("d"), resource_version: String::new(), uid: String::new(), grace_period_seconds: None }, false).await.unwrap();
    create(&store, "e").await;
    let page = store.list_at("containers", None, Some(&next), 0, 4, |_| true).unwrap();
    let got: Vec<(String, String)> =
        page.items.iter().map(|s| (s.key.name.clone(), s.object.spec["image"].as_str().unwrap().to_string())).collect();
    assert_eq!(got, [("c".to_string(), "a".to_string()), ("d".to_string(), "a".to_string())]);
    assert_eq!(page.revision, 4);
    // Once the history no longer reaches back: Expired.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir2.path().join("s.db"));
    cfg.history_events = 2;
    let small = Store::open(cfg).await.unwrap();
    for n in ["a", "b", "c", "d"] {
        create(&small, n).await;
    }
    assert!(matches!(small.list_at("containers", None, None, 0, 1, |_| true), Err(StoreError::Expired { .. })));
    assert_eq!(small.list_at("containers", None, None, 0, 2, |_| true).unwrap().items.len(), 2);
}

/// The in-memory history is bounded in bytes too: rewriting one large
/// object many times does not pin every old version.
#[tokio::test]
async fn history_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("s.db"));
    cfg.history_bytes = 100_000;
    let store = Store::open(cfg).await.unwrap();
    create(&store, "a").await;
    for i in 0..20 {
        let mut o = store.get(&key("a")).unwrap().object.clone();
        o.metadata.annotations.insert("pad".into(), format!("{i}{}", "x".repeat(20_000)));
        store.write(Write::Update { key: key("a"), object: o }, false).await.unwrap();
    }
    // Each event holds ~40 KB (object and previous): two fit, not twenty.
    let rev = store.revision();
    assert!(store.list_at("containers", None, None, 0, rev - 2, |_| true).is_ok());
    assert!(matches!(store.list_at("containers", None, None, 0, rev - 5, |_| true), Err(StoreError::Expired { .. })));
}

/// A row whose ownerReferences were free-form (before they were typed) is
/// kept without them, the original copied to the quarantine table, and
/// rewritten readable by the next snapshot.
#[tokio::test]
async fn open_salvages_a_row_with_untyped_owner_references() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(Config::new(&path)).await.unwrap();
    create(&store, "old").await;
    store.shutdown().await;
    let data = r#"{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{"name":"old","uid":"u","resourceVersion":"1","ownerReferences":[{"whatever":1}]},"spec":{"image":"a"}}"#;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    sqlx::query("UPDATE objects SET data = ?").bind(data).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    let store = Store::open(Config::new(&path)).await.unwrap();
    let o = store.get(&key("old")).expect("salvaged, not dropped");
    assert!(o.object.metadata.owner_references.is_empty());
    assert_eq!(o.object.metadata.uid, "u");
    store.shutdown().await;
    // Rewritten at shutdown's snapshot: a third open has nothing to salvage.
    let store = Store::open(Config::new(&path)).await.unwrap();
    assert!(store.get(&key("old")).is_some());
    store.shutdown().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM quarantine").fetch_one(&mut conn).await.unwrap().get(0);
    assert_eq!(n, 1);
}

/// The audit's case: ownerReferences nested ~238 deep (the row 242), more
/// than serde_json's recursion limit. The row is salvaged, not deleted; so
/// are references that are not the last member, and strings holding
/// brackets, quotes and the key's name.
#[tokio::test]
async fn open_salvages_owner_references_nested_deeper_than_serde_json_reads() {
    use sqlx::{Connection, Row};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(Config::new(&path)).await.unwrap();
    create(&store, "deep").await;
    create(&store, "mid").await;
    store.shutdown().await;
    let deep = format!("{}1{}", "[".repeat(238), "]".repeat(238));
    let rows = [
        ("deep", format!(r#"{{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{{"name":"deep","uid":"u1","resourceVersion":"1","ownerReferences":[{{"x":{deep}}}]}},"spec":{{"image":"a"}}}}"#)),
        ("mid", format!(r#"{{"apiVersion":"steward.dev/v1alpha1","kind":"Container","metadata":{{"name":"mid","ownerReferences":[{{"s":"]}}\"\\","ownerReferences":{deep}}}],"uid":"u2","labels":{{"l":"\"ownerReferences\":[" }},"resourceVersion":"2"}},"spec":{{"image":"a"}}}}"#)),
    ];
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    for (name, data) in &rows {
        assert!(steward_store::write::json_depth(data.as_bytes()) > 240);
        sqlx::query("UPDATE objects SET data = ? WHERE name = ?").bind(data).bind(name).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    let store = Store::open(Config::new(&path)).await.unwrap();
    let o = store.get(&key("deep")).expect("salvaged, not dropped");
    assert!(o.object.metadata.owner_references.is_empty());
    assert_eq!(o.object.metadata.uid, "u1");
    let o = store.get(&key("mid")).expect("salvaged, not dropped");
    assert_eq!(o.object.metadata.uid, "u2");
    assert_eq!(o.object.metadata.labels["l"], "\"ownerReferences\":[");
    store.shutdown().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM quarantine").fetch_one(&mut conn).await.unwrap().get(0);
    assert_eq!(n, 2);
}

/// After a restart (no in-memory history), replayed events still carry the
/// previous version, read from the log or, once compacted, from the
/// snapshot table.
#[tokio::test]
async fn replayed_events_carry_the_previous_version_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut cfg = Config::new(&path);
    cfg.snapshot_interval = Duration::from_secs(3600);
    cfg.retention.max_events = 0;
    let store = Store::open(cfg.clone()).await.unwrap();
    create(&store, "a").await; // 1
    create(&store, "b").await; // 2
    // Snapshot at 2, and the log compacted through 2.
    assert_eq!(store.compact().await.unwrap(), 2);
    let relabel = |s: &Store, name: &str, v: &str| {
        let mut o = s.get(&key(name)).unwrap().object.clone();
        o.metadata.labels.insert("app".into(), v.into());
        Write::Update { key: key(name), object: o }
    };
    store.write(relabel(&store, "a", "web"), false).await.unwrap(); // 3, prev 1
    store.write(relabel(&store, "a", "db"), false).await.unwrap(); // 4, prev 3
    store.write(Write::Delete { key: key("b"), resource_version: String::new(), uid: String::new(), grace_period_seconds: None }, false).await.unwrap(); // 5, prev 2

    // As after a crash: a new store on the file, no snapshot since 2.
    let other = Store::open(cfg).await.unwrap();
    let mut w = other.watch("containers", Some(2)).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = w.next().await.unwrap().unwrap();
        let prev = e.prev.as_ref().map(|p| (p.revision, p.object.metadata.labels.get("app").cloned()));
        got.push((e.revision, prev));
    }
    assert_eq!(got, [(3, Some((1, None))), (4, Some((3, Some("web".to_string())))), (5, Some((2, None)))]);
}

/// The store's identity lives in the store: made once at creation, the same
/// after every reopen (and after the file is copied elsewhere), never
/// replaced by an adoption offer once there; a store without one adopts
/// the offered (older steward's) uid once.
#[tokio::test]
async fn the_store_uid_is_made_once_and_travels_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(Config::new(&path)).await.unwrap();
    let uid = store.uid().to_string();
    assert!(uid.len() >= 16, "{uid:?}");
    create(&store, "c1").await;
    store.shutdown().await;

    let mut cfg = Config::new(&path);
    cfg.adopt_uid = Some("another-uid-0123456789".into());
    let store = Store::open(cfg).await.unwrap();
    assert_eq!(store.uid(), uid, "reopen changed the store's identity");
    store.shutdown().await;

    // Only steward.db moved (as a restore from backup): same identity.
    let moved = dir.path().join("moved.db");
    std::fs::copy(&path, &moved).unwrap();
    let store = Store::open(Config::new(&moved)).await.unwrap();
    assert_eq!(store.uid(), uid, "a moved store got a new identity");
    store.shutdown().await;

    // Another new store: another identity.
    let other = Store::open(Config::new(dir.path().join("other.db"))).await.unwrap();
    assert_ne!(other.uid(), uid);
    other.shutdown().await;

    // A store without one adopts the offered uid, once.
    let mut cfg = Config::new(dir.path().join("adopting.db"));
    cfg.adopt_uid = Some("0123abcd-legacy-uid".into());
    let store = Store::open(cfg).await.unwrap();
    assert_eq!(store.uid(), "0123abcd-legacy-uid");
    store.shutdown().await;
    let store = Store::open(Config::new(dir.path().join("adopting.db"))).await.unwrap();
    assert_eq!(store.uid(), "0123abcd-legacy-uid");
    store.shutdown().await;
}
