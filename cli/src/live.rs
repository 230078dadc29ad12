//! The configuration in force while `steward serve` runs, and its reload
//! (SIGHUP, `POST /-/reload`): the file is parsed and validated in full,
//! the flags' overrides applied again, and only then is the new value
//! swapped in, whole (read-copy-update): a reader sees the old or the new
//! configuration, never half of each; a pull or reconcile already running
//! finishes with the value it started with. A bad file changes nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use steward_apiserver::{ReloadError, ReloadReport};
use steward_controller::containerd;

use crate::serve::{self, ServeArgs};

pub struct LiveConfig {
    /// The file reloaded (`None`: started on built-in defaults).
    path: Option<PathBuf>,
    data_dir: PathBuf,
    /// What the flags override, applied to every new file.
    concurrency: Option<usize>,
    event_retention: Option<std::time::Duration>,
    /// The configuration the process started with: restart-only keys are compared
    /// with it, so a change stays reported until a restart applies it.
    started: Arc<steward_config::Config>,
    /// What the container runtime reads live (registries, handlers), if
    /// it runs: one value, swapped whole.
    runtime: Option<Arc<ArcSwap<containerd::Live>>>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl LiveConfig {
    /// `started` is the configuration in force, flags applied; `path` the
    /// file it came from.
    pub fn new(
        args: &ServeArgs,
        path: Option<PathBuf>,
        started: &steward_config::Config,
        runtime: Option<Arc<ArcSwap<containerd::Live>>>,
    ) -> Self {
        LiveConfig {
            path,
            data_dir: args.data_dir.clone(),
            concurrency: args.concurrency,
            event_retention: args.event_retention,
            started: Arc::new(started.clone()),
            runtime,
            lock: tokio::sync::Mutex::new(()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    async fn reload_inner(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.lock.lock().await;
        let Some(path) = self.path.clone() else {
            return Err(ReloadError::NoFile(format!(
                "no configuration file to reload: serve was started without --config and {} did not exist",
                steward_config::DEFAULT_PATH
            )));
        };
        let file = tokio::task::spawn_blocking(move || steward_config::Config::load(&path))
            .await
            .map_err(|e| ReloadError::Unreadable(format!("reading the configuration: {e}")))?
            .map_err(|e| match e {
                steward_config::ConfigError::Read { .. } => ReloadError::Unreadable(e.to_string()),
                e => ReloadError::Invalid(e.to_string()),
            })?;
        let digest = file.digest();
        let mut new = file;
        serve::apply_flags(&mut new, self.concurrency, self.event_retention);
        serve::check_log_level(&new).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let restart_required: Vec<String> = new.restart_only_changes(&self.started).into_iter().map(String::from).collect();
        // What the runtime reads live, swapped whole.
        if let Some(live) = &self.runtime {
            let next = containerd::Live::new(&new, &self.data_dir);
            let missing = next.handlers.missing_runtimes();
            if !missing.is_empty() {
                tracing::warn!(handlers = ?missing, "runtime handlers whose runtime binary is not installed: containers naming them fail to create");
            }
            live.store(Arc::new(next));
        }
        Ok(ReloadReport { digest, restart_required })
    }
}

impl steward_apiserver::Reloader for LiveConfig {
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, ReloadError>> {
        Box::pin(async move {
            let r = self.reload_inner().await;
            match &r {
                Ok(rep) if rep.restart_required.is_empty() => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(digest = %rep.digest, "configuration reloaded");
                }
                Ok(rep) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(digest = %rep.digest, restart_required = ?rep.restart_required, "configuration reloaded; some changed keys apply only after a restart");
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "configuration reload refused; the previous configuration stays in force");
                }
            }
            r
        })
    }

    fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Takes SIGHUP over at once (its default action would end the process),
/// before the slow parts of start-up; hand the result to
/// [`reload_on_sighup`] once the configuration can be reloaded.
pub fn catch_sighup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
            None
        }
    }
}

/// Reloads on every SIGHUP (one that came during start-up included), for
/// as long as the process lives.
pub fn reload_on_sighup(live: Arc<LiveConfig>, hup: Option<tokio::signal::unix::Signal>) {
    use steward_apiserver::Reloader;
    let Some(mut hup) = hup else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = live.reload().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readers racing reloads see one whole configuration or the other,
    /// never a mix: each value written has all its fields equal.
    #[test]
    fn the_swap_is_whole_under_concurrent_readers() {
        let valid = |n: usize| {
            let mut c = steward_config::Config::default();
            c.controller.concurrency = n;
            c.images.gc.high_threshold_percent = (10 + n % 80) as u8;
            c.images.gc.low_threshold_percent = 1;
            c.log.level = format!("l{n}");
            c
        };
        let cell = Arc::new(ArcSwap::from_pointee(valid(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (cell, stop) = (cell.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = cell.load();
                        let n = c.controller.concurrency;
                        assert_eq!(c.images.gc.high_threshold_percent as usize, 10 + n % 80, "a torn configuration");
                        assert_eq!(c.log.level, format!("l{n}"), "a torn configuration");
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        for n in 1..20_000usize {
            cell.store(Arc::new(valid(n)));
        }
        stop.store(true, Ordering::Relaxed);
        let total: u64 = readers.into_iter().map(|r| r.join().expect("a reader panicked")).sum();
        assert!(total > 0);
    }
}
