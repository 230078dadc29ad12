//! Carries out the plan: writes status, then takes exactly one step
//! against the runtime, and says when to look again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use steward_schema::{Condition, Container, ContainerStatus, PullPolicy, Time};

use super::plan::{
    limits_label, made_from, plan_with, spec_labels, stop_params, teardown, Plan, Step,
    CONDITION_RESIZE_PENDING, REASON_CREATE_ERROR, REASON_ERR_PULL, REASON_PORT_CONFLICT,
    REASON_PULLING, REASON_PULL_BACKOFF,
};
use super::probes::{ProbeView, Prober, Target};
use super::pulls::{PullState, Pulls};
use crate::actual::{
    ActualContainer, Runtime, RuntimeError, TaskStatus, StoreUid, LABEL_LIMITS, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAMESPACE,
    LABEL_STORE, LABEL_UID, MANAGED_BY,
};
use crate::client::Api;
use crate::runtime::controller::Action;
use crate::runtime::finalizer::{finalizer, FinalizerError, FinalizerEvent};
use crate::runtime::{ObjectRef, SourceError};

/// Kept on every Container until its runtime objects are gone.
pub const FINALIZER: &str = "steward.dev/containerd";

/// Safety net while waiting for a task to die after SIGKILL (the exit
/// event normally comes first).
const KILL_RECHECK: Duration = Duration::from_secs(2);
/// While its image is pulled, a container is looked at this often (its
/// status shows the progress); the end of the pull wakes it at once.
const PULL_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Api(#[from] SourceError),
}

impl From<FinalizerError<ReconcileError>> for ReconcileError {
    fn from(e: FinalizerError<ReconcileError>) -> Self {
        match e {
            FinalizerError::Reconcile(e) => e,
            FinalizerError::Api(e) => ReconcileError::Api(e),
        }
    }
}

pub struct Context<R> {
    pub api: Api<Container>,
    pub runtime: Arc<R>,
    /// The identity of the store the objects live in: every container
    /// created carries it (`steward.dev/store`), see [`super::gc`].
    pub store_uid: StoreUid,
    /// Image pulls, shared, outside the reconcile slots.
    pub pulls: Pulls<R>,
    /// Health probes of running containers.
    pub prober: Arc<Prober>,
    /// Events about the objects, for `describe`.
    pub events: crate::events::Recorder,
}

/// The reconcile function handed to the controller runtime.
pub async fn reconcile<R: Runtime>(obj: Arc<Container>, ctx: Arc<Context<R>>) -> Result<Action, ReconcileError> {
    let c = ctx.clone();
    Ok(finalizer(&ctx.api, FINALIZER, obj, move |ev| async move {
        match ev {
            FinalizerEvent::Apply(o) => apply(&o, &c).await,
            FinalizerEvent::Cleanup(o) => cleanup(&o, &c).await,
        }
    })
    .await?)
}

async fn apply<R: Runtime>(obj: &Container, ctx: &Context<R>) -> Result<Action, ReconcileError> {
    let actual = ctx.runtime.find(&obj.metadata.uid).await?;
    // A spec change (the user may have fixed what made the pull fail)
    // starts the image's pull backoff over.
    if obj.status.as_ref().and_then(|s| s.observed_generation).is_some_and(|g| g < obj.metadata.generation) {
        ctx.pulls.reset_backoff(&obj.spec.image);
    }
    let now = Time::now();
    let probes = probe_view(ctx, obj, &actual);
    let Plan { mut step, mut status } = plan_with(obj, &actual, &probes, &now);
    handler_condition(&*ctx.runtime, obj.spec.runtime_class_name.as_deref(), &mut status, &now);
    // A spec change would replace the container, but the new spec names a
    // runtime handler the configuration no longer has: the replacement
    // could never be made. Keep the running container, and say why.
    if let Some(h) = obj.spec.runtime_class_name.as_deref() {
        let replacing = actual.iter().any(|c| !made_from(c, &obj.spec));
        if replacing && matches!(ctx.runtime.handler_definition(h), Some(None)) {
            status = obj.status.clone().unwrap_or_default();
            status.observed_generation = Some(obj.metadata.generation);
            let message = format!(
                "the spec changed, but its runtime handler {h:?} is not configured: the running container is kept until the handler is configured again or runtimeClassName names another"
            );
            set_handler_condition(&mut status, Some(("HandlerRemoved", message)), &now);
            step = Step::Nothing { requeue: Some(Duration::from_secs(30)) };
        }
    }
    tracing::debug!(?step, "planned");
    status_events(ctx, obj, &status);
    let obj = write_status(ctx, obj, status).await?;
    execute(ctx, &obj, step).await
}

/// The events a change of status is worth: a crash loop's back-off, and a
/// readiness probe that started failing (or fails differently).
fn status_events<R>(ctx: &Context<R>, obj: &Container, next: &ContainerStatus) {
    let prior = obj.status.as_ref();
    let waiting = |s: Option<&ContainerStatus>| {
        s.and_then(|s| s.state.as_ref()).and_then(|s| s.waiting.as_ref()).map(|w| w.reason.clone()).unwrap_or_default()
    };
    if waiting(Some(next)) == super::plan::REASON_CRASH_LOOP && waiting(prior) != super::plan::REASON_CRASH_LOOP {
        ctx.events.warning(obj, "BackOff", format!("Back-off restarting failed container {}", obj.metadata.name));
    }
    let ready = |s: Option<&ContainerStatus>| s.and_then(|s| s.condition("Ready")).map(|c| (c.reason.clone(), c.message.clone()));
    if let Some((reason, message)) = ready(Some(next)) {
        if reason == "ReadinessProbeFailed" && ready(prior) != Some((reason, message.clone())) {
            ctx.events.warning(obj, "Unhealthy", message);
        }
    }
}

/// `RuntimeHandlerCurrent`: False while the container runs with a handler
/// definition the configuration no longer has (changed, or the handler
/// removed); it keeps running and stays manageable with the one it was
/// created with. Absent when current.
fn handler_condition<R: Runtime + ?Sized>(rt: &R, named: Option<&str>, status: &mut ContainerStatus, now: &Time) {
    let Some(h) = status.runtime_handler.clone() else {
        // No container (yet): nothing to say of its handler.
        set_handler_condition(status, None, now);
        return;
    };
    let Some(configured) = rt.handler_definition(&h.name) else { return };
    let problem = match configured {
        None => Some((
            "HandlerRemoved",
            format!("runtime handler {:?} is no longer configured; the container keeps the definition it was created with", h.name),
        )),
        Some(d) if d != h.definition => Some((
            "DefinitionChanged",
            format!(
                "runtime handler {:?} was redefined since this container was created; new containers use the new definition, this one keeps its own until it is recreated",
                h.name
            ),
        )),
        // The container took the default; the default is another now.
        Some(_) => match (named, rt.default_handler()) {
            (None, Some(d)) if d != h.name => Some((
                "DefaultChanged",
                format!("runtimes.default is now {d:?}; this container was made with {:?} and keeps it until it is recreated", h.name),
            )),
            _ => None,
        },
    };
    set_handler_condition(status, problem, now);
}

/// `RuntimeHandlerCurrent=False` with `problem` (reason, message), keeping
/// its transition time while the reason stays; none: the condition goes.
fn set_handler_condition(status: &mut ContainerStatus, problem: Option<(&str, String)>, now: &Time) {
    let prev = status.condition(CONDITION_RUNTIME_HANDLER).cloned();
    status.conditions.retain(|c| c.type_ != CONDITION_RUNTIME_HANDLER);
    if let Some((reason, message)) = problem {
        let since = prev.filter(|p| p.reason == reason).and_then(|p| p.last_transition_time).unwrap_or(*now);
        status.conditions.push(Condition {
            type_: CONDITION_RUNTIME_HANDLER.into(),
            status: "False".into(),
            reason: reason.into(),
            message,
            last_transition_time: Some(since),
        });
    }
}

/// The probe outcomes of `obj`'s running container (starting its probes
/// if need be), or none (its probes stop) when it has no running task.
fn probe_view<R: Runtime>(ctx: &Context<R>, obj: &Container, actual: &[ActualContainer]) -> ProbeView {
    let m = &obj.metadata;
    let running = actual
        .iter()
        .filter(|c| made_from(c, &obj.spec))
        .find_map(|c| c.task.as_ref().filter(|t| t.status == TaskStatus::Running && t.pid != 0).map(|t| (c, t.pid)));
    let Some((c, pid)) = running else {
        ctx.prober.forget(&m.uid);
        return ProbeView::default();
    };
    let target = match (obj.spec.network.as_deref(), c.ip.as_deref().and_then(|ip| ip.parse().ok())) {
        (Some(steward_schema::NETWORK_HOST), _) => Target::Loopback,
        (_, Some(ip)) => Target::Ip(ip),
        _ => Target::Unreachable,
    };
    ctx.prober.view(&ObjectRef::new(&m.namespace, &m.name), &m.uid, &c.id, pid, target, &obj.spec)
}

/// Deleting: tear every container of the object down, a step per pass;
/// `AwaitChange` (finalizer removed) once nothing is left.
async fn cleanup<R: Runtime>(obj: &Container, ctx: &Context<R>) -> Result<Action, ReconcileError> {
    ctx.prober.forget(&obj.metadata.uid);
    let actual = ctx.runtime.find(&obj.metadata.uid).await?;
    let Some(c) = actual.first() else {
        // The containers are gone: their logs go last, before the
        // finalizer (a crash here finds this pass again).
        let m = &obj.metadata;
        ctx.runtime.remove_logs(&m.namespace, &m.name, &m.uid).await?;
        return Ok(Action::AwaitChange);
    };
    let (signal, mut grace) = stop_params(c, Some(&obj.spec));
    // The delete's own grace period (`kubectl delete --grace-period`)
    // wins when shorter.
    if let Some(g) = obj.metadata.deletion_grace_period_seconds {
        grace = grace.min(std::time::Duration::from_secs(g.max(0) as u64));
    }
    match execute(ctx, obj, teardown(c, signal, grace, &Time::now())).await? {
        // Not done until the containers are gone.
        Action::AwaitChange => Ok(Action::Requeue(KILL_RECHECK)),
        a => Ok(a),
    }
}

/// Writes `status` through the status subresource when it differs.
async fn write_status<R>(ctx: &Context<R>, obj: &Container, status: ContainerStatus) -> Result<Container, ReconcileError> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(obj.clone());
    }
    let mut o = obj.clone();
    o.status = Some(status);
    Ok(ctx.api.replace_status(&o).await?)
}

/// Records why the container is not running, unless the status says so
/// already (no write, so no watch event and no new pass). A merge patch
/// without precondition: pull progress may have moved the object's version
/// since this pass read it, and this is the newest word on the state anyway.
async fn set_waiting<R>(ctx: &Context<R>, obj: &Container, reason: &str, message: String) -> Result<(), ReconcileError> {
    let shown = obj.status.as_ref().and_then(|s| s.state.as_ref()).and_then(|s| s.waiting.as_ref());
    if shown.is_some_and(|w| w.reason == reason && w.message == message) {
        return Ok(());
    }
    let new_reason = shown.is_none_or(|w| w.reason != reason);
    let patch = json!({"status": {"state": {"waiting": {"reason": reason, "message": message}, "running": null, "terminated": null}}});
    ctx.api.patch_status(&obj.metadata.namespace, &obj.metadata.name, &patch).await?;
    let image = &obj.spec.image;
    match reason {
        // Progress of a pull is not an event; its start is.
        super::plan::REASON_PULLING if new_reason => ctx.events.normal(obj, "Pulling", format!("Pulling image {image:?}")),
        super::plan::REASON_PULL_BACKOFF if new_reason => ctx.events.normal(obj, "BackOff", format!("Back-off pulling image {image:?}")),
        super::plan::REASON_PULLING | super::plan::REASON_PULL_BACKOFF => {}
        super::plan::REASON_ERR_PULL => ctx.events.warning(obj, "Failed", format!("Failed to pull image {image:?}: {message}")),
        _ => ctx.events.warning(obj, "Failed", message),
    }
    Ok(())
}

fn waiting_reason(obj: &Container) -> &str {
    obj.status
        .as_ref()
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| w.reason.as_str())
        .unwrap_or_default()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// How often a container refused a host port looks again without being
/// woken (the port's owner going wakes it at once).
const PORT_RECHECK: Duration = Duration::from_secs(10);

async fn execute<R: Runtime>(ctx: &Context<R>, obj: &Container, step: Step) -> Result<Action, ReconcileError> {
    let rt = &ctx.runtime;
    match step {
        Step::Nothing { requeue } => Ok(requeue.map_or(Action::AwaitChange, Action::Requeue)),
        Step::Create { id } => {
            // A name no registry could serve: say so in status (the
            // kubelet's InvalidImageName), not only in steward's log.
            if let Err(e) = crate::containerd::registry::Reference::parse(&obj.spec.image) {
                set_waiting(ctx, obj, super::plan::REASON_INVALID_IMAGE_NAME, e.clone()).await?;
                return Err(RuntimeError::ImagePull(e).into());
            }
            let image = match image_for(ctx, obj).await {
                Ok(Image::Ready(i)) => i,
                // Being pulled, or a failed pull backing off: this slot is
                // free for others meanwhile.
                Ok(Image::Wait(after)) => return Ok(Action::Requeue(after)),
                Err(ImageError::Runtime(e @ RuntimeError::ImageNeverPull(_))) => {
                    let reason = match waiting_reason(obj) {
                        REASON_ERR_PULL | REASON_PULL_BACKOFF => REASON_PULL_BACKOFF,
                        _ => REASON_ERR_PULL,
                    };
                    set_waiting(ctx, obj, reason, e.to_string()).await?;
                    return Err(e.into());
                }
                Err(ImageError::Runtime(e)) => return Err(e.into()),
                Err(ImageError::Api(e)) => return Err(e),
            };
            match rt.create(&id, &obj.spec, &image, object_labels(ctx, obj)).await {
                Ok(()) => {
                    ctx.events.normal(obj, "Created", format!("Created container {}", obj.metadata.name));
                    Ok(Action::Requeue(Duration::ZERO))
                }
                Err(e @ RuntimeError::Create(_)) => {
                    set_waiting(ctx, obj, REASON_CREATE_ERROR, e.to_string()).await?;
                    Err(e.into())
                }
                Err(e) => Err(e.into()),
            }
        }
        Step::Start { id } => match rt.start(&id).await {
            Ok(pid) => {
                tracing::info!(container = %id, pid, "started");
                ctx.events.normal(obj, "Started", format!("Started container {}", obj.metadata.name));
                Ok(Action::Requeue(Duration::ZERO))
            }
            Err(e @ RuntimeError::Create(_)) => {
                set_waiting(ctx, obj, REASON_CREATE_ERROR, e.to_string()).await?;
                Err(e.into())
            }
            Err(RuntimeError::PortConflict(m)) => {
                // Woken when the port is freed; the requeue is a safety net
                // for a port held by a process outside steward.
                tracing::info!(container = %id, "{m}");
                set_waiting(ctx, obj, REASON_PORT_CONFLICT, m).await?;
                Ok(Action::Requeue(PORT_RECHECK))
            }
            Err(e) => Err(e.into()),
        },
        Step::Stop { id, signal, grace } => {
            // Signal first, then record it: a crash in between re-signals,
            // rather than SIGKILLing a container that was never asked.
            rt.kill(&id, signal, false).await?;
            rt.mark_stopping(&id, Time::now()).await?;
            tracing::info!(container = %id, signal, grace = grace.as_secs(), "stopping");
            ctx.events.normal(obj, "Killing", format!("Stopping container {}", obj.metadata.name));
            Ok(Action::Requeue(grace))
        }
        Step::Relabel { id, labels } => {
            tracing::info!(container = %id, ?labels, "relabelling");
            rt.update_labels(&id, labels).await?;
            Ok(Action::Requeue(Duration::ZERO))
        }
        Step::Resize { id } => {
            let limits = limits_label(&obj.spec);
            match rt.resize(&id, &obj.spec, BTreeMap::from([(LABEL_LIMITS.to_string(), limits.clone())])).await {
                Ok(()) => {
                    tracing::info!(container = %id, %limits, "resources updated in place");
                    Ok(Action::Requeue(Duration::ZERO))
                }
                Err(e @ RuntimeError::Create(_)) => {
                    // The container runs on with its old limits; say why,
                    // and retry (with backoff) in case it fits later.
                    let mut conditions = obj.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                    conditions.retain(|c| c.type_ != CONDITION_RESIZE_PENDING);
                    let prev = obj.status.as_ref().and_then(|s| s.condition(CONDITION_RESIZE_PENDING));
                    conditions.push(Condition {
                        type_: CONDITION_RESIZE_PENDING.into(),
                        status: "True".into(),
                        reason: "Infeasible".into(),
                        message: e.to_string(),
                        last_transition_time: prev.and_then(|c| c.last_transition_time).or_else(|| Some(Time::now())),
                    });
                    let patch = json!({"status": {"conditions": conditions}});
                    ctx.api.patch_status(&obj.metadata.namespace, &obj.metadata.name, &patch).await?;
                    Err(e.into())
                }
                Err(e) => Err(e.into()),
            }
        }
        Step::RepairRootfs { id, image } => {
            // No status write on any path: the container's state is what it
            // was; a failure retries with backoff.
            let cfg = rt.ensure_image(&image, PullPolicy::IfNotPresent, Box::new(|_| {})).await?;
            rt.create(&id, &obj.spec, &cfg, object_labels(ctx, obj)).await?;
            tracing::warn!(container = %id, %image, "rootfs snapshot was removed behind steward's back; prepared again");
            Ok(Action::Requeue(Duration::ZERO))
        }
        Step::Kill { id } => {
            rt.kill(&id, 9, true).await?;
            Ok(Action::Requeue(KILL_RECHECK))
        }
        Step::Detach { id } => {
            rt.detach(&id).await?;
            tracing::info!(container = %id, "finished: network released");
            Ok(Action::Requeue(Duration::ZERO))
        }
        Step::Signal { id, signal, grace } => {
            let why = obj.status.as_ref().and_then(|s| s.condition(super::plan::CONDITION_UNHEALTHY)).map(|c| c.message.clone());
            tracing::warn!(container = %id, signal, grace = grace.as_secs(), reason = why.as_deref().unwrap_or_default(), "unhealthy: stopping to restart");
            rt.kill(&id, signal, false).await?;
            if let Some(why) = why {
                ctx.events.warning(obj, "Unhealthy", why.rsplit_once(" [pid ").map_or(why.as_str(), |(m, _)| m).to_string());
            }
            ctx.events.normal(obj, "Killing", format!("Container {} failed its probe, will be restarted", obj.metadata.name));
            Ok(Action::Requeue(grace))
        }
        Step::DeleteTask { id } => {
            rt.delete_task(&id).await?;
            Ok(Action::Requeue(Duration::ZERO))
        }
        Step::Remove { id } => {
            rt.remove(&id).await?;
            tracing::info!(container = %id, "removed");
            Ok(Action::Requeue(Duration::ZERO))
        }
    }
}

/// The labels of a container steward creates for `obj`.
fn object_labels<R>(ctx: &Context<R>, obj: &Container) -> BTreeMap<String, String> {
    let m = &obj.metadata;
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_UID.to_string(), m.uid.clone()),
        (LABEL_NAMESPACE.to_string(), m.namespace.clone()),
        (LABEL_NAME.to_string(), m.name.clone()),
        (LABEL_STORE.to_string(), ctx.store_uid.to_string()),
    ]);
    labels.extend(spec_labels(&obj.spec));
    labels
}

/// The condition [`handler_condition`] sets.
pub const CONDITION_RUNTIME_HANDLER: &str = "RuntimeHandlerCurrent";

enum Image {
    Ready(crate::actual::ImageConfig),
    /// Not yet: look again after this (or when the pull wakes it).
    Wait(Duration),
}

enum ImageError {
    Runtime(RuntimeError),
    Api(ReconcileError),
}

/// The image of `obj`: from the local store at once if it is there (and the
/// policy allows), else from the shared pull. While the pull runs the
/// status says `ImagePulling` with its progress; when it failed,
/// `ErrImagePull` (to the objects that waited for it), then
/// `ImagePullBackOff` with the error and when the next pull starts, which
/// is when this object looks again. A pull error on display is never
/// overwritten by `ImagePulling` (the retry's outcome replaces it).
async fn image_for<R: Runtime>(ctx: &Context<R>, obj: &Container) -> Result<Image, ImageError> {
    let image = &obj.spec.image;
    let policy = obj.spec.image_pull_policy.unwrap_or(PullPolicy::IfNotPresent);
    let who = ObjectRef::new(&obj.metadata.namespace, &obj.metadata.name);
    // Present already? (Skipped while a pull of it runs: it is not, yet.)
    if policy != PullPolicy::Always && !ctx.pulls.is_pulling(image) {
        match ctx.runtime.ensure_image(image, PullPolicy::Never, Box::new(|_| {})).await {
            Ok(cfg) => {
                // Not waiting for a pull any more (if it was).
                ctx.pulls.forget(image, &who);
                ctx.events.normal(obj, "Pulled", format!("Container image {image:?} already present on machine"));
                return Ok(Image::Ready(cfg));
            }
            Err(RuntimeError::ImageNeverPull(_)) if policy != PullPolicy::Never => {}
            Err(e) => return Err(ImageError::Runtime(e)),
        }
    }
    let shown = obj.status.as_ref().and_then(|s| s.state.as_ref()).and_then(|s| s.waiting.as_ref());
    match ctx.pulls.poll(image, policy, &who) {
        PullState::Pulled(cfg) => {
            ctx.events.normal(obj, "Pulled", format!("Successfully pulled image {image:?}"));
            Ok(Image::Ready(cfg))
        }
        PullState::Failed(f) => {
            if !matches!(f.error, RuntimeError::ImagePull(_)) {
                // containerd failed, not the pull: the controller's backoff.
                return Err(ImageError::Runtime(f.error));
            }
            let (reason, message) = if f.fresh {
                (REASON_ERR_PULL, f.error.to_string())
            } else {
                (
                    REASON_PULL_BACKOFF,
                    format!(
                        "Back-off {}s pulling image {image} (next attempt at {}): {}",
                        f.backoff.as_secs(),
                        f.retry_at.0.format("%Y-%m-%dT%H:%M:%SZ"),
                        f.error
                    ),
                )
            };
            set_waiting(ctx, obj, reason, message).await.map_err(ImageError::Api)?;
            // ErrImagePull shown: the write brings the next pass, which
            // shows the backoff; then nothing until the backoff ends.
            Ok(Image::Wait(f.retry_in))
        }
        PullState::Pulling(p) => {
            if shown.is_some_and(|w| w.reason == REASON_ERR_PULL || w.reason == REASON_PULL_BACKOFF) {
                return Ok(Image::Wait(PULL_RECHECK));
            }
            let msg = if p.total > 0 {
                format!("pulling {image}: {} of {}", mib(p.done), mib(p.total))
            } else {
                format!("pulling {image}")
            };
            set_waiting(ctx, obj, REASON_PULLING, msg).await.map_err(ImageError::Api)?;
            Ok(Image::Wait(PULL_RECHECK))
        }
    }
}

/// The object a runtime container id belongs to (`ns.name.tag`).
pub fn object_of(container_id: &str) -> Option<ObjectRef> {
    let mut parts = container_id.rsplitn(2, '.');
    let _tag = parts.next()?;
    let (ns, name) = parts.next()?.split_once('.')?;
    Some(ObjectRef::new(ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_map_back_to_objects() {
        assert_eq!(object_of("default.web.0123456789ab"), Some(ObjectRef::new("default", "web")));
        assert_eq!(object_of("garbage"), None);
    }
}
