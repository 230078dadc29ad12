//! The finalizer helper: reconcilers never touch the finalizer list.
//!
//! An object without `deletionTimestamp` gets the finalizer first (that
//! write's watch event brings the next reconcile), then `Apply`. A deleting
//! object gets `Cleanup`. Clean-up may take several passes (a grace period,
//! say): it returns `Requeue(d)` while work remains and `AwaitChange` when
//! done; only then is the finalizer removed, and the store deletes the
//! object once no finalizer is left.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::controller::Action;
use super::{Resource, SourceError};

pub enum FinalizerEvent<K> {
    Apply(Arc<K>),
    Cleanup(Arc<K>),
}

/// Writes an object's finalizer list (with its resourceVersion as
/// precondition, so a stale object conflicts instead of clobbering).
pub trait FinalizerApi<K>: Send + Sync {
    fn set_finalizers<'a>(&'a self, obj: &'a K, finalizers: Vec<String>) -> BoxFuture<'a, Result<(), SourceError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum FinalizerError<E> {
    #[error("{0}")]
    Reconcile(E),
    #[error("updating finalizers: {0}")]
    Api(SourceError),
}

pub async fn finalizer<K, A, F, Fut, E>(api: &A, name: &str, obj: Arc<K>, f: F) -> Result<Action, FinalizerError<E>>
where
    K: Resource,
    A: FinalizerApi<K>,
    F: FnOnce(FinalizerEvent<K>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let meta = obj.meta();
    let has = meta.finalizers.iter().any(|f| f == name);
    match (meta.deletion_timestamp.is_some(), has) {
        (false, true) => f(FinalizerEvent::Apply(obj)).await.map_err(FinalizerError::Reconcile),
        (false, false) => {
            let mut list = meta.finalizers.clone();
            list.push(name.to_string());
            api.set_finalizers(&obj, list).await.map_err(FinalizerError::Api)?;
            Ok(Action::AwaitChange)
        }
        (true, true) => match f(FinalizerEvent::Cleanup(obj.clone())).await.map_err(FinalizerError::Reconcile)? {
            Action::AwaitChange => {
                let list = obj.meta().finalizers.iter().filter(|f| *f != name).cloned().collect();
                api.set_finalizers(&obj, list).await.map_err(FinalizerError::Api)?;
                Ok(Action::AwaitChange)
            }
            more => Ok(more),
        },
        // Being deleted, and our part is done (or never started).
        (true, false) => Ok(Action::AwaitChange),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use steward_schema::{Container, Time};

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<String>>>);

    impl FinalizerApi<Container> for Recorder {
        fn set_finalizers<'a>(&'a self, _: &'a Container, f: Vec<String>) -> BoxFuture<'a, Result<(), SourceError>> {
            self.0.lock().unwrap().push(f);
            Box::pin(async { Ok(()) })
        }
    }

    const F: &str = "steward.dev/containerd";

    async fn run(c: Container, api: &Recorder) -> (Result<Action, FinalizerError<String>>, &'static str) {
        let seen = Mutex::new("none");
        let r = finalizer(api, F, Arc::new(c), |ev| {
            *seen.lock().unwrap() = match ev {
                FinalizerEvent::Apply(_) => "apply",
                FinalizerEvent::Cleanup(_) => "cleanup",
            };
            async { Ok::<_, String>(Action::AwaitChange) }
        })
        .await;
        let s = *seen.lock().unwrap();
        (r, s)
    }

    #[tokio::test]
    async fn adds_first_then_applies_then_cleans_up_and_removes() {
        let api = Recorder::default();
        let mut c = Container::default();
        c.metadata.finalizers = vec!["other.dev/x".into()];
        let (r, seen) = run(c.clone(), &api).await;
        assert!(r.is_ok());
        assert_eq!(seen, "none", "reconciled before the finalizer was there");
        assert_eq!(api.0.lock().unwrap().pop(), Some(vec!["other.dev/x".to_string(), F.to_string()]));

        c.metadata.finalizers.push(F.into());
        assert_eq!(run(c.clone(), &api).await.1, "apply");
        assert!(api.0.lock().unwrap().is_empty());

        c.metadata.deletion_timestamp = Some(Time::now());
        assert_eq!(run(c.clone(), &api).await.1, "cleanup");
        assert_eq!(api.0.lock().unwrap().pop(), Some(vec!["other.dev/x".to_string()]));

        c.metadata.finalizers.retain(|f| f != F);
        assert_eq!(run(c, &api).await.1, "none");
    }

    #[tokio::test]
    async fn unfinished_cleanup_keeps_the_finalizer() {
        let api = Recorder::default();
        let mut c = Container::default();
        c.metadata.finalizers = vec![F.into()];
        c.metadata.deletion_timestamp = Some(Time::now());
        let d = std::time::Duration::from_secs(3);
        let r = finalizer(&api, F, Arc::new(c), |_| async move { Ok::<_, String>(Action::Requeue(d)) }).await;
        assert_eq!(r.unwrap(), Action::Requeue(d));
        assert!(api.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_cleanup_keeps_the_finalizer() {
        let api = Recorder::default();
        let mut c = Container::default();
        c.metadata.finalizers = vec![F.into()];
        c.metadata.deletion_timestamp = Some(Time::now());
        let r = finalizer(&api, F, Arc::new(c), |_| async { Err::<Action, _>("task still running".to_string()) }).await;
        assert!(matches!(r, Err(FinalizerError::Reconcile(_))));
        assert!(api.0.lock().unwrap().is_empty());
    }
}
