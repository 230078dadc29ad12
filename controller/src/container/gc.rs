//! Garbage collection of runtime containers nobody owns, safe when several
//! stewards share one containerd namespace.
//!
//! Every container steward creates carries `steward.dev/store=<store uid>`
//! (the identity of the store that owns its object, created with the data
//! dir). A collector only ever touches containers of its own store, and
//! removes one only after a live GET of its object (never the cache alone)
//! answered 404 or an object with another uid. Orphans are stopped as their
//! object would have been: their recorded stop signal, then SIGKILL after
//! their recorded grace period, a step per pass.
//!
//! Containers made by a steward from before store identities have no store
//! label. One whose object exists here with the same uid is adopted (the
//! label is added). One whose object does not exist here is left alone with
//! a warning: it may belong to another store on the same namespace that has
//! not adopted it yet, and removing another store's container is exactly
//! the bug this module exists to prevent. (Objects deleted normally never
//! leave such containers: the finalizer removes them first.)

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use steward_schema::{Container, Time};

use super::plan::{stop_params, teardown, Step};
use crate::actual::{ActualContainer, LogOwner, Runtime, RuntimeError, StoreUid, LABEL_NAME, LABEL_NAMESPACE, LABEL_STORE, LABEL_UID};
use crate::client::Api;
use crate::runtime::controller::Cache;

/// After SIGKILL, look again this soon.
const KILL_RECHECK: Duration = Duration::from_millis(500);

/// An orphan younger than this is left for now (and looked at again when
/// it is old enough): whoever created it may be between Containers.Create,
/// Tasks.Create and Tasks.Start, and containerd 1.6 lets a container be
/// deleted under a task being created, which orphans that task beyond
/// reach. As the kubelet's container GC, which spares containers younger
/// than its MinAge.
const MIN_AGE: Duration = Duration::from_secs(2);

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Orphans removed.
    pub collected: usize,
    /// Legacy containers labelled as this store's.
    pub adopted: usize,
    /// Log directories of objects that are gone, removed (a crash between
    /// removing the last container and its logs).
    pub logs_collected: usize,
    /// Unlabelled containers without an object here, left alone.
    pub unclaimed: Vec<String>,
    /// Orphans still stopping: look again after this.
    pub again_in: Option<Duration>,
}

impl GcReport {
    fn wait(&mut self, d: Duration) {
        self.again_in = Some(self.again_in.map_or(d, |a| a.min(d)));
    }
}

/// Whose a container is, as far as this store can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Another store's: never touched.
    Foreign,
    /// This store's, and its object lives.
    Live,
    /// Unlabelled, its object lives here: label it.
    Adopt,
    /// This store's, and the live GET says its object is gone (404 or
    /// another uid).
    Orphan,
    /// Unlabelled and no object here: perhaps another store's.
    Unclaimed,
}

pub struct Collector<R> {
    pub runtime: std::sync::Arc<R>,
    pub api: Api<Container>,
    /// This store's identity.
    pub store_uid: StoreUid,
}

impl<R: Runtime> Collector<R> {
    /// Looks at every managed container. Call only once `cache` holds a
    /// complete list (it only saves GETs: nothing is removed on its word).
    pub async fn sweep(&self, cache: &Cache<Container>) -> Result<GcReport, RuntimeError> {
        let all = self.runtime.list().await?;
        // Read the cache after listing: a container created meanwhile
        // belongs to an object already in the cache.
        let live: HashSet<String> = cache.list().iter().map(|o| o.metadata.uid.clone()).collect();
        let mut report = GcReport::default();
        for c in &all {
            self.handle(c, &live, &mut report).await;
        }
        self.collect_logs(&all, &live, &mut report).await;
        // Images: never one a live object names or was made from.
        let keep: std::collections::BTreeSet<String> = cache
            .list()
            .iter()
            .flat_map(|o| {
                let digest = o.status.as_ref().and_then(|s| s.image_digest.clone());
                let name = crate::containerd::registry::Reference::parse(&o.spec.image).ok().map(|r| r.full_name());
                digest.into_iter().chain(name)
            })
            .collect();
        match self.runtime.collect_images(&keep).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(images = ?removed, "image garbage collection removed unused images"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
        match self.runtime.collect_runtime_wrappers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(wrappers = n, "removed runtime wrapper scripts no container refers to"),
            Err(e) => tracing::warn!(error = %e, "could not collect runtime wrapper scripts"),
        }
        if !report.unclaimed.is_empty() {
            tracing::warn!(
                containers = ?report.unclaimed,
                "containers from an older steward without a store label and without an object in this store: left \
                 alone (they may be another store's); remove them with `ctr -n NAMESPACE task kill` and `ctr -n \
                 NAMESPACE container rm` if they are nobody's"
            );
        }
        Ok(report)
    }

    /// Removes the logs of objects that are gone: no container has their
    /// uid and a live GET says 404 or another uid.
    async fn collect_logs(&self, all: &[ActualContainer], live: &HashSet<String>, report: &mut GcReport) {
        let owners = match self.runtime.log_owners().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list log directories");
                return;
            }
        };
        // Files of the old per-id layout: kept while their container exists.
        let ids: HashSet<String> = all.iter().map(|c| c.id.clone()).collect();
        match self.runtime.collect_legacy_logs(&ids).await {
            Ok(n) => report.logs_collected += n,
            Err(e) => tracing::warn!(error = %e, "could not collect old per-container logs"),
        }
        let in_use: HashSet<&str> = all.iter().map(|c| c.label(LABEL_UID)).collect();
        for LogOwner { namespace: ns, name, uid } in owners {
            if in_use.contains(uid.as_str()) || live.contains(&uid) {
                continue;
            }
            match self.api.get(&ns, &name).await {
                Ok(Some(o)) if o.metadata.uid == uid => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(object = %format!("{ns}/{name}"), error = %e, "cannot check the owner of logs; keeping them");
                    continue;
                }
            }
            match self.runtime.remove_logs(&ns, &name, &uid).await {
                Ok(()) => {
                    tracing::info!(object = %format!("{ns}/{name}"), %uid, "collected the logs of a deleted object");
                    report.logs_collected += 1;
                }
                Err(e) => tracing::warn!(error = %e, "could not remove orphan logs"),
            }
        }
    }

    /// Looks at one container (just created, by its event). `cache`, if
    /// given, saves the GET for containers of objects it holds.
    pub async fn check(&self, id: &str, cache: Option<&Cache<Container>>) -> Result<GcReport, RuntimeError> {
        let mut report = GcReport::default();
        if let Some(c) = self.runtime.get(id).await? {
            let live: HashSet<String> = match cache {
                Some(cache) => cache.list().iter().map(|o| o.metadata.uid.clone()).filter(|u| u == c.label(LABEL_UID)).collect(),
                None => HashSet::new(),
            };
            self.handle(&c, &live, &mut report).await;
        }
        Ok(report)
    }

    async fn handle(&self, c: &ActualContainer, live: &HashSet<String>, report: &mut GcReport) {
        let verdict = match self.judge(c, live).await {
            Ok(v) => v,
            Err(e) => {
                // Cannot tell: keep it, and look again later.
                tracing::warn!(container = %c.id, error = %e, "cannot check the owner of a container; keeping it");
                return;
            }
        };
        match verdict {
            Verdict::Foreign | Verdict::Live => {}
            Verdict::Unclaimed => report.unclaimed.push(c.id.clone()),
            Verdict::Adopt => match self.runtime.update_labels(&c.id, BTreeMap::from([(LABEL_STORE.to_string(), self.store_uid.to_string())])).await {
                Ok(()) => {
                    tracing::info!(container = %c.id, store = %self.store_uid, "adopted a container of an older steward");
                    report.adopted += 1;
                }
                Err(e) => tracing::warn!(container = %c.id, error = %e, "could not adopt a container"),
            },
            Verdict::Orphan => match self.collect(c).await {
                Ok(None) => report.collected += 1,
                Ok(Some(d)) => report.wait(d),
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "collecting garbage failed; retrying");
                    report.wait(Duration::from_secs(5));
                }
            },
        }
    }

    async fn judge(&self, c: &ActualContainer, live: &HashSet<String>) -> Result<Verdict, String> {
        let store = c.labels.get(LABEL_STORE);
        if store.is_some_and(|s| s != self.store_uid.as_str()) {
            return Ok(Verdict::Foreign);
        }
        let uid = c.label(LABEL_UID);
        if store.is_some() && !uid.is_empty() && live.contains(uid) {
            return Ok(Verdict::Live);
        }
        // The live word, never the cache's.
        let (ns, name) = (c.label(LABEL_NAMESPACE), c.label(LABEL_NAME));
        let object = if ns.is_empty() || name.is_empty() {
            None // no object can have this key
        } else {
            self.api.get(ns, name).await.map_err(|e| e.to_string())?
        };
        let alive = object.is_some_and(|o| !uid.is_empty() && o.metadata.uid == uid);
        Ok(match (store.is_some(), alive) {
            (true, true) => Verdict::Live,
            (true, false) => Verdict::Orphan,
            (false, true) => Verdict::Adopt,
            (false, false) => Verdict::Unclaimed,
        })
    }

    /// Takes an orphan down as far as it can now: `None` once it is gone,
    /// else when to look again (its grace period is running).
    async fn collect(&self, c: &ActualContainer) -> Result<Option<Duration>, RuntimeError> {
        // Its own recorded signal and grace (no object says otherwise).
        let (signal, grace) = stop_params(c, None);
        let mut c = c.clone();
        for _ in 0..4 {
            let now = Time::now();
            if let Some(young) = c.created_at.as_ref().and_then(|t| MIN_AGE.checked_sub((now.0 - t.0).to_std().unwrap_or_default())) {
                if !young.is_zero() {
                    return Ok(Some(young.max(KILL_RECHECK)));
                }
            }
            tracing::info!(container = %c.id, uid = c.label(LABEL_UID), "collecting garbage");
            match teardown(&c, signal, grace, &now) {
                Step::Remove { id } => {
                    self.runtime.remove(&id).await?;
                    return Ok(None);
                }
                Step::DeleteTask { id } => self.runtime.delete_task(&id).await?,
                Step::Stop { id, signal, grace } => {
                    self.runtime.kill(&id, signal, false).await?;
                    self.runtime.mark_stopping(&id, Time::now()).await?;
                    return Ok(Some(grace.max(KILL_RECHECK)));
                }
                Step::Kill { id } => {
                    self.runtime.kill(&id, 9, true).await?;
                    return Ok(Some(KILL_RECHECK));
                }
                Step::Nothing { requeue } => return Ok(Some(requeue.unwrap_or(KILL_RECHECK).max(KILL_RECHECK))),
                // Never planned by teardown; nothing to do for an orphan.
                Step::Create { .. }
                | Step::Start { .. }
                | Step::Relabel { .. }
                | Step::Resize { .. }
                | Step::RepairRootfs { .. }
                | Step::Signal { .. }
                | Step::Detach { .. } => {
                    return Ok(Some(KILL_RECHECK))
                }
            }
            // By id: an orphan may have no (or an empty) uid label.
            match self.runtime.get(&c.id).await? {
                Some(fresh) => c = fresh,
                None => return Ok(None),
            }
        }
        Ok(Some(KILL_RECHECK))
    }
}
