//! A controller for steward's Containers written with kube-rs, the real
//! crate, as one would write it for any Kubernetes API: it reads the
//! kubeconfig (`$KUBECONFIG`, e.g. the one `steward serve` writes),
//! watches Containers with `kube::runtime::watcher`, keeps a finalizer on
//! each with `kube::runtime::finalizer`, and records in an annotation the
//! generation it last saw. Containers are not a kube-rs type: they are
//! `DynamicObject`s of `steward.dev/v1alpha1` `Container`.
//!
//! It prints one line per thing it does, for people and for the e2e test
//! (`e2e/tests/kube_rs.rs`): `relist` when the watcher (re)lists,
//! `applied NS/NAME generation=G`, `cleaned up NS/NAME`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

const FINALIZER: &str = "example.steward.dev/cleanup";
const SEEN: &str = "example.steward.dev/seen-generation";
const MANAGER: &str = "kube-example";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<kube::Error>>),
}

struct Ctx {
    ar: ApiResource,
    client: Client,
}

fn containers() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("steward.dev", "v1alpha1", "Container"), "containers")
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.ar);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(o) => {
                let generation = o.metadata.generation.unwrap_or_default().to_string();
                if o.annotations().get(SEEN) != Some(&generation) {
                    let patch = serde_json::json!({"metadata": {"annotations": {SEEN: generation}}});
                    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                    api.patch(&o.name_any(), &params, &Patch::Merge(&patch)).await?;
                    println!("applied {ns}/{} generation={generation}", o.name_any());
                }
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(o) => {
                println!("cleaned up {ns}/{}", o.name_any());
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(_obj: Arc<DynamicObject>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    eprintln!("reconcile failed: {e}");
    Action::requeue(Duration::from_secs(1))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let ar = containers();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // A plain watcher beside the controller, to show its (re)lists: after
    // a watch's resourceVersion was compacted (410), it lists again.
    let watch = watcher(all.clone(), watcher::Config::default()).for_each(|e| async move {
        match e {
            Ok(watcher::Event::Init) => println!("relist"),
            Ok(watcher::Event::Delete(o)) => println!("deleted {}/{}", o.namespace().unwrap_or_default(), o.name_any()),
            Ok(_) => {}
            Err(e) => eprintln!("watch error: {e}"),
        }
    });
    let ctx = Arc::new(Ctx { ar: ar.clone(), client });
    let controller = Controller::new_with(all, watcher::Config::default(), ar)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("controller: {e}");
            }
        });
    println!("watching containers");
    tokio::join!(watch, controller);
    Ok(())
}
