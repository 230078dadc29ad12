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
    store.write(Write::Delete { key: key("c4"), resource_version: String::new(), uid: String::new() }, false).await.unwrap();
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
            Some(Err(StoreError::TooSlow(10))) => break,
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
    store.write(Write::Delete { key: key("c2"), resource_version: String::new(), uid: String::new() }, false).await.unwrap();
    create(&store, "c9").await;

    let other = Store::open(cfg).await.unwrap();
    assert_eq!(other.revision(), store.revision());
    assert_eq!(other.object_count(), 5);
    assert_eq!(other.get(&key("c1")).unwrap().object.spec, json!({"image": "new"}));
    assert!(other.get(&key("c2")).is_none());
    assert_eq!(other.get(&key("c9")).unwrap().object.metadata.uid, store.get(&key("c9")).unwrap().object.metadata.uid);
}
