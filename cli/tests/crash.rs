//! Crash durability: a `steward serve` under concurrent write load is
//! SIGKILLed at random moments and restarted on the same data dir; every
//! write a client saw acknowledged must be there, and revisions must keep
//! growing. `STEWARD_CRASH_CYCLES` sets the number of cycles (default 20).
//!
//! Every fifth cycle lives past the store's snapshot interval (2 s) and
//! its compaction (the server keeps only 500 events and compacts every
//! 300 ms), so the crash lands after a snapshot and a compaction, and the
//! restart must replay the log on top of both.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestServer;
use rand::Rng;
use serde_json::{json, Value};

const WRITERS: usize = 8;
/// A small event log compacted often, so long cycles outlive a compaction.
const SERVE_FLAGS: &[&str] = &["--event-retention-count", "500", "--compact-interval", "300ms"];
const BASE: &str = "/apis/steward.dev/v1alpha1/namespaces/default/containers";

/// What one client saw acknowledged.
#[derive(Default)]
struct Acked {
    /// Created objects: name → (uid, revision).
    created: BTreeMap<String, (String, i64)>,
    /// Highest acknowledged counter value per counter object.
    counters: BTreeMap<String, u64>,
    max_revision: i64,
}

fn obj(name: &str, counter: u64) -> Value {
    json!({
        "apiVersion": "steward.dev/v1alpha1", "kind": "Container",
        "metadata": {"name": name, "annotations": {"counter": counter.to_string()}},
        "spec": {"image": "busybox", "args": ["sleep", counter.to_string()]}
    })
}

fn rev(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(-1)
}

/// Writes until the server dies: creates with unique names and updates of
/// a counter object; records what was acknowledged.
fn client(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

async fn writer(url: String, token: String, cycle: usize, w: usize) -> Acked {
    let client = client(&token);
    let mut acked = Acked::default();
    let counter = format!("counter-{w}");
    for i in 0.. {
        // Alternate: create a new object, then bump this writer's counter.
        let name = format!("c{cycle}-{w}-{i}");
        let r = client.post(format!("{url}{BASE}")).json(&obj(&name, 0)).send().await;
        let Ok(r) = r else { break };
        if r.status() != 201 {
            break;
        }
        let Ok(v) = r.json::<Value>().await else { break };
        acked.max_revision = acked.max_revision.max(rev(&v));
        acked.created.insert(name, (v["metadata"]["uid"].as_str().unwrap_or_default().to_string(), rev(&v)));

        let value = (cycle * 1_000_000 + i) as u64;
        let r = client
            .patch(format!("{url}{BASE}/{counter}?fieldManager=crash-test"))
            .header("content-type", "application/apply-patch+yaml")
            .body(obj(&counter, value).to_string())
            .send()
            .await;
        let Ok(r) = r else { break };
        if !r.status().is_success() {
            break;
        }
        let Ok(v) = r.json::<Value>().await else { break };
        acked.max_revision = acked.max_revision.max(rev(&v));
        acked.counters.insert(counter.clone(), value);
    }
    acked
}

/// Checks that everything acknowledged so far is in the restarted store.
async fn verify(url: &str, token: &str, all: &Acked, logs: &str) -> i64 {
    let client = client(token);
    let list: Value = client.get(format!("{url}{BASE}")).send().await.unwrap().json().await.unwrap();
    let list_rev: i64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(
        list_rev >= all.max_revision,
        "store revision {list_rev} is behind an acknowledged revision {}\n{logs}",
        all.max_revision
    );
    let items: BTreeMap<String, &Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o))
        .collect();
    for (name, (uid, r)) in &all.created {
        let o = items.get(name).unwrap_or_else(|| panic!("acknowledged create of {name} (revision {r}) was lost\n{logs}"));
        assert_eq!(o["metadata"]["uid"].as_str(), Some(uid.as_str()), "{name} changed identity");
    }
    for (name, value) in &all.counters {
        let o = items.get(name).unwrap_or_else(|| panic!("counter {name} lost"));
        let stored: u64 = o["metadata"]["annotations"]["counter"].as_str().unwrap().parse().unwrap();
        assert!(stored >= *value, "{name}: acknowledged {value}, store has {stored}\n{logs}");
    }
    list_rev
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let cycles: usize = std::env::var("STEWARD_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut all = Acked::default();
    let mut rng = rand::thread_rng();
    let mut total_acked = 0;
    for cycle in 0..cycles {
        let mut server = TestServer::start_with(dir.path(), SERVE_FLAGS);
        let url = server.url().to_string();
        let token = server.token().to_string();
        let before = rt.block_on(verify(&url, &token, &all, &server.logs()));
        let tasks: Vec<_> = (0..WRITERS).map(|w| rt.spawn(writer(url.clone(), token.clone(), cycle, w))).collect();
        let life = if cycle % 5 == 4 { rng.gen_range(2_300..3_300) } else { rng.gen_range(100..600) };
        std::thread::sleep(Duration::from_millis(life));
        server.kill();
        for t in tasks {
            let a = rt.block_on(t).unwrap();
            // Revisions keep growing across restarts: everything acknowledged
            // in this life is newer than what the store had when it started.
            if let Some(min) = a.created.values().map(|(_, r)| *r).min() {
                assert!(min > before, "cycle {cycle}: revision {min} reused (store was at {before})");
            }
            total_acked += a.created.len();
            all.max_revision = all.max_revision.max(a.max_revision);
            all.created.extend(a.created);
            for (k, v) in a.counters {
                let e = all.counters.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }
    let server = TestServer::start_with(dir.path(), SERVE_FLAGS);
    rt.block_on(verify(server.url(), server.token(), &all, &server.logs()));
    // The log was compacted along the way: history from revision 1 is gone.
    let first = rt.block_on(async {
        let r = client(server.token())
            .get(format!("{}{BASE}?watch=true&resourceVersion=1&timeoutSeconds=1", server.url()))
            .send()
            .await
            .expect("watch");
        r.text().await.expect("watch body")
    });
    assert!(first.contains("Expired"), "the event log was never compacted: a watch from revision 1 got {first:.300}");
    assert!(total_acked > cycles * WRITERS, "too few writes acknowledged ({total_acked}) for the test to mean anything");
    eprintln!("{cycles} SIGKILL cycles, {total_acked} acknowledged creates, all present");
}
