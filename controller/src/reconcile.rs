//! One reconcile of one StreamPipeline: validate references, guard the
//! checkpointed state, apply the owned objects, aggregate the runners' status,
//! evaluate alerts, and write the status only when it changed.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc};

use jiff::Timestamp;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        core::v1::{Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use sluice_crds::{Phase, StreamPipeline, StreamPipelineStatus, UpgradePolicy};

use crate::{
    alerts::{self, webhook::AlertNotice, webhook::AlertState},
    checkpoints,
    context::{Context, FIELD_MANAGER},
    error::{self, Error},
    fingerprint::state_fingerprint,
    render::{self, Names, Runners, lineage_uri},
    rescale,
    status::{
        aggregate::{RunnersSummary, aggregate},
        conditions::{self, DEGRADED, Desired, PROGRESSING, READY},
        pods::{self, PodProblem},
    },
    validate::{self, Invalid},
};

/// Finalizer that applies `spec.checkpoint.retainOnDelete`.
pub const FINALIZER: &str = "sluice.dev/checkpoints";

/// Progressing's message while a refused spec holds a rescale up.
const RESCALE_PAUSED: &str =
    "a rescale is paused until the problem in Ready is fixed: no runners run until then";

/// Reconciles `pipeline`: the entry point for kube's `Controller`, and for tests.
pub async fn reconcile(pipeline: Arc<StreamPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let result = match pipeline.namespace() {
        None => Err(Error::NotNamespaced),
        Some(namespace) => {
            let api: Api<StreamPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
            finalizer(&api, FINALIZER, pipeline, |event| async {
                match event {
                    FinalizerEvent::Apply(pipeline) => apply(&pipeline, &ctx, &namespace).await,
                    FinalizerEvent::Cleanup(pipeline) => cleanup(&pipeline, &ctx, &namespace).await,
                }
            })
            .await
            .map_err(|e| Error::Finalizer(Box::new(e)))
        }
    };
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    result
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(pipeline: Arc<StreamPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(
        pipeline = %pipeline.name_any(),
        namespace = pipeline.namespace().unwrap_or_default(),
        %error,
        "reconcile failed"
    );
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(ctx.backoff(&pipeline))
}

/// Kubernetes Events waiting for the status write.
type Events = Vec<Event>;

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    }
}

async fn apply(pipeline: &StreamPipeline, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let now = Timestamp::now();
    let old = pipeline.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = pipeline.metadata.generation;
    let mut events = Events::new();

    let spec_problem =
        validate::expressions(&pipeline.spec).or_else(|| validate::checkpoint_uri(&pipeline.spec));
    let invalid = match spec_problem {
        Some(invalid) => Some(invalid),
        None => {
            let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
            validate::secrets(&secrets, namespace, &pipeline.spec).await?
        }
    };
    if let Some(invalid) = invalid {
        return refuse(pipeline, ctx, old, status, invalid, now).await;
    }

    let fingerprint = state_fingerprint(&pipeline.spec);
    match old.state_fingerprint.as_deref() {
        Some(saved) if saved != fingerprint => match pipeline.spec.upgrade_policy {
            UpgradePolicy::Reset => {
                status.lineage = old.lineage + 1;
                status.state_fingerprint = Some(fingerprint);
                events.push(event(
                    EventType::Normal,
                    "CheckpointLineageReset",
                    format!(
                        "window state changed with upgradePolicy reset: runners start checkpoint lineage {} at {}",
                        status.lineage,
                        lineage_uri(&pipeline.spec.checkpoint.uri, status.lineage)
                    ),
                ));
            }
            UpgradePolicy::Resume => {
                let invalid = Invalid {
                    reason: "IncompatibleStateChange",
                    message: format!(
                        "the change of spec.window (kind, size, slide, gap, groupBy or aggregations) or of a dedup \
                         transform (idField or horizon) makes the state checkpointed in lineage {} unusable, so it \
                         was not applied; revert it, or set spec.upgradePolicy: reset to start a new checkpoint \
                         lineage (open windows and remembered ids are discarded)",
                        old.lineage
                    ),
                };
                return refuse(pipeline, ctx, old, status, invalid, now).await;
            }
        },
        _ => status.state_fingerprint = Some(fingerprint),
    }

    // A change of spec.parallelism stops every runner of the old set before
    // the new one starts (see `rescale`); a refused spec never gets here.
    let desired = pipeline.spec.parallelism;
    let drain = drain_old_runners(pipeline, ctx, namespace, &old, &mut status, &mut events).await?;
    if let Some((from, pods)) = &drain {
        if pipeline.spec.suspend {
            let note = format!(
                "spec.parallelism changed from {from} to {desired}: {desired} runners start when it is resumed"
            );
            suspended(pipeline, &mut status, Some(&note), now);
        } else {
            let message = rescale::waiting_message(*from, desired, pods, now);
            rescaling(pipeline, &mut status, pods.len(), message, now);
        }
    } else {
        status.running_parallelism = Some(desired);
        let runners = Runners::of(pipeline);
        let stateful_set = apply_owned(ctx, namespace, pipeline, status.lineage, runners).await?;
        if pipeline.spec.suspend {
            suspended(pipeline, &mut status, None, now);
        } else {
            let (answers, pod_problems) = futures::join!(
                ctx.runners.fetch_all(pipeline, desired),
                runner_pod_problems(pipeline, ctx, namespace, now),
            );
            running(
                pipeline,
                &mut status,
                &old,
                &aggregate(&answers),
                &pod_problems?,
                &stateful_set,
                now,
            );
        }
    }
    let starting = drain.is_none() && !pipeline.spec.suspend;
    ctx.metrics.set_runners(
        namespace,
        &pipeline.name_any(),
        Some((if starting { desired } else { 0 }, status.ready_replicas)),
    );
    condition_events(&old, &status, &mut events);
    let transitions = alerts::transitions(&old.alerts, &status.alerts);
    for alert in &transitions.fired {
        events.push(event(
            EventType::Warning,
            "AlertFiring",
            alerts::describe(alert),
        ));
    }
    for alert in &transitions.cleared {
        events.push(event(
            EventType::Normal,
            "AlertCleared",
            format!("recovered: {}", alerts::describe(alert)),
        ));
    }
    write_status(pipeline, ctx, namespace, &old, &status).await?;
    publish(ctx, pipeline, events).await;
    notify_webhooks(pipeline, ctx, namespace, &transitions, now).await;
    ctx.metrics.set_lag(
        namespace,
        &pipeline.name_any(),
        status
            .lag
            .as_ref()
            .map(|lag| (lag.records as f64, lag.seconds)),
    );
    ctx.reset_backoff(pipeline);
    let next = match drain {
        Some(_) if !pipeline.spec.suspend => ctx.settings.resync_interval.min(rescale::DRAIN_POLL),
        _ => ctx.settings.resync_interval,
    };
    Ok(Action::requeue(next))
}

/// When the runners were started with another parallelism than the spec's,
/// stops them (the owned objects of the old set, scaled to zero) and returns
/// that parallelism and the runner pods left, for as long as any is left or
/// the StatefulSet has not confirmed it runs none (or the pipeline is
/// suspended). None when the spec's set may run: a rescale is then recorded
/// in status already, and `events` has `Rescaled`.
async fn drain_old_runners(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
    old: &StreamPipelineStatus,
    status: &mut StreamPipelineStatus,
    events: &mut Events,
) -> Result<Option<(i32, Vec<Pod>)>, Error> {
    let desired = pipeline.spec.parallelism;
    let started_with = match old.running_parallelism {
        Some(running) => Some(running),
        None => rescale::started_with(
            &rescale::runner_pods(pipeline, &ctx.client, namespace).await?,
            desired,
        ),
    };
    let Some(from) = started_with.filter(|&n| n != desired) else {
        return Ok(None);
    };
    let stopped = apply_owned(
        ctx,
        namespace,
        pipeline,
        status.lineage,
        Runners::stopped(from),
    )
    .await?;
    let pods = rescale::runner_pods(pipeline, &ctx.client, namespace).await?;
    if !pods.is_empty() || !rescale::scaled_to_zero(&stopped) || pipeline.spec.suspend {
        status.running_parallelism = Some(from);
        return Ok(Some((from, pods)));
    }
    // Recorded before the new set starts: should this reconcile stop
    // half-way, the next one must not drain the new set again.
    let recorded = StreamPipelineStatus {
        running_parallelism: Some(desired),
        ..old.clone()
    };
    write_status(pipeline, ctx, namespace, old, &recorded).await?;
    events.push(event(
        EventType::Normal,
        rescale::RESCALED,
        format!(
            "rescaled from {from} to {desired} runners: every runner of the old set has stopped; \
             {desired} runners start and resume from the checkpoints"
        ),
    ));
    Ok(None)
}

/// Renders the owned objects for `runners` and applies them; the StatefulSet
/// as the API server returned it (with its status).
async fn apply_owned(
    ctx: &Context,
    namespace: &str,
    pipeline: &StreamPipeline,
    lineage: i64,
    runners: Runners,
) -> Result<StatefulSet, Error> {
    let rendered = render::render(pipeline, &ctx.settings, lineage, runners)?;
    server_side_apply(ctx, namespace, &rendered.service_account).await?;
    server_side_apply(ctx, namespace, &rendered.config_map).await?;
    server_side_apply(ctx, namespace, &rendered.service).await?;
    server_side_apply(ctx, namespace, &rendered.stateful_set).await
}

/// Leaves the owned objects as they are, reports why, and retries with
/// backoff (a fix of the spec or a new Secret is picked up then, or at once
/// through the watch).
async fn refuse(
    pipeline: &StreamPipeline,
    ctx: &Context,
    old: StreamPipelineStatus,
    mut status: StreamPipelineStatus,
    invalid: Invalid,
    now: Timestamp,
) -> Result<Action, Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let generation = pipeline.metadata.generation;
    let time = Time(now);
    status.phase = Some(Phase::Failed);
    // The runners keep the last accepted spec; `suspend` alone is safe to
    // honour (it only stops them, checkpoints are kept), so it is.
    let mut message = invalid.message.clone();
    // A drain under way stays as it is (scaled to zero) until the spec is
    // accepted again; Progressing carries that across refused reconciles.
    let rescale_paused = !pipeline.spec.suspend
        && conditions::get(&old.conditions, PROGRESSING)
            .is_some_and(|c| c.reason == rescale::RESCALING || c.message == RESCALE_PAUSED);
    let runners = if pipeline.spec.suspend {
        let stopped = suspend_runners(pipeline, ctx, &namespace).await?;
        no_runners(&mut status);
        ctx.metrics
            .set_runners(&namespace, &pipeline.name_any(), Some((0, 0)));
        if stopped {
            message.push_str(
                "; spec.suspend is applied all the same: the runners are stopped (the last accepted spec, \
                 checkpoints kept)",
            );
        } else {
            message.push_str("; spec.suspend is true: no runners run");
        }
        "spec.suspend is true: no runners run, so no alert threshold is evaluated"
    } else if rescale_paused {
        message.push_str(
            "; a rescale was under way: the runners of the old set are stopped, and the new set starts \
             once the spec is accepted",
        );
        "not evaluated while the spec is refused (see Ready): a rescale is paused and no runners run"
    } else {
        "not evaluated while the spec is refused (see Ready): the runners keep running the last accepted spec"
    };
    let progressing = Desired::new(
        PROGRESSING,
        false,
        invalid.reason,
        if rescale_paused {
            RESCALE_PAUSED
        } else {
            "waiting for the problem in Ready to be fixed"
        },
    );
    conditions::set(&mut status.conditions, progressing, generation, &time);
    let ready = Desired::new(READY, false, invalid.reason, message);
    conditions::set(&mut status.conditions, ready, generation, &time);
    // An alert or pod problem seen before the refusal is no longer known to
    // hold: say so rather than keep a stale Degraded=True.
    let degraded = if pipeline.spec.suspend {
        Desired::new(DEGRADED, false, invalid.reason, runners)
    } else {
        Desired::unknown(DEGRADED, invalid.reason, runners)
    };
    conditions::set(&mut status.conditions, degraded, generation, &time);
    let mut events = Events::new();
    condition_events(&old, &status, &mut events);
    write_status(pipeline, ctx, &namespace, &old, &status).await?;
    publish(ctx, pipeline, events).await;
    Ok(Action::requeue(ctx.backoff(pipeline)))
}

/// Scales the runners of a refused pipeline with `spec.suspend: true` to
/// zero; false when there is no StatefulSet (nothing ever ran).
async fn suspend_runners(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
) -> Result<bool, Error> {
    let name = Names::stateful_set(pipeline);
    let api = Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"spec": {"replicas": 0}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(error) => Err(error::api("scale to zero", "StatefulSet", &name)(error)),
    }
}

/// The problems of the runner pods `<name>-0 .. <name>-<parallelism - 1>`
/// (a pod not created yet has none).
async fn runner_pod_problems(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
    now: Timestamp,
) -> Result<Vec<PodProblem>, Error> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    let names: Vec<String> = (0..pipeline.spec.parallelism)
        .map(|replica| format!("{}-{replica}", Names::stateful_set(pipeline)))
        .collect();
    let found = futures::future::join_all(names.iter().map(|name| api.get_opt(name))).await;
    let mut problems = Vec::new();
    for (name, pod) in names.iter().zip(found) {
        let pod = pod.map_err(error::api("get", "Pod", name))?;
        problems.extend(pod.and_then(|pod| pods::problem(&pod, now)));
    }
    Ok(problems)
}

/// No runner runs: nothing is measured, no threshold can be exceeded
/// (the last checkpoint and watermark are kept).
fn no_runners(status: &mut StreamPipelineStatus) {
    status.replicas = 0;
    status.ready_replicas = 0;
    status.lag = None;
    status.events_per_second = None;
    status.dead_letter_per_second = None;
    status.duplicates_per_second = None;
    status.alerts = Vec::new();
}

/// `note`: a rescale waiting for the resume.
fn suspended(
    pipeline: &StreamPipeline,
    status: &mut StreamPipelineStatus,
    note: Option<&str>,
    now: Timestamp,
) {
    let (generation, time) = (pipeline.metadata.generation, Time(now));
    status.phase = Some(Phase::Suspended);
    no_runners(status);
    let mut message = String::from(
        "spec.suspend is true: no runners run; checkpoints are kept and resumed from when it is set back to false",
    );
    if let Some(note) = note {
        message.push_str("; ");
        message.push_str(note);
    }
    for (type_, state) in [(READY, false), (PROGRESSING, false), (DEGRADED, false)] {
        conditions::set(
            &mut status.conditions,
            Desired::new(type_, state, "Suspended", message.clone()),
            generation,
            &time,
        );
    }
}

/// A drain in progress: `remaining` runner pods of the old set are still
/// there. Nothing is measured while they stop; alerts and the last lag,
/// watermark and checkpoint are kept as they were (no alert fires or clears
/// for a pause the user asked for), and Degraded says it is not evaluated.
fn rescaling(
    pipeline: &StreamPipeline,
    status: &mut StreamPipelineStatus,
    remaining: usize,
    message: String,
    now: Timestamp,
) {
    let (generation, time) = (pipeline.metadata.generation, Time(now));
    status.phase = Some(Phase::Rescaling);
    status.replicas = i32::try_from(remaining).unwrap_or(i32::MAX);
    status.ready_replicas = 0;
    status.events_per_second = None;
    status.dead_letter_per_second = None;
    status.duplicates_per_second = None;
    let degraded = Desired::unknown(
        DEGRADED,
        rescale::RESCALING,
        "not evaluated during a rescale: no runner processes events until the new set starts",
    );
    for desired in [
        Desired::new(READY, false, rescale::RESCALING, message.clone()),
        Desired::new(PROGRESSING, true, rescale::RESCALING, message),
        degraded,
    ] {
        conditions::set(&mut status.conditions, desired, generation, &time);
    }
}

fn running(
    pipeline: &StreamPipeline,
    status: &mut StreamPipelineStatus,
    old: &StreamPipelineStatus,
    runners: &RunnersSummary,
    pod_problems: &[PodProblem],
    stateful_set: &StatefulSet,
    now: Timestamp,
) {
    let (generation, time) = (pipeline.metadata.generation, Time(now));
    let desired = pipeline.spec.parallelism;
    status.replicas = runners.reporting;
    status.ready_replicas = runners.ready;
    status.lag = runners.lag.clone();
    status.watermark = runners.watermark.clone().or_else(|| old.watermark.clone());
    status.events_per_second = runners.events_per_second;
    status.dead_letter_per_second = runners.dead_letter_per_second;
    status.duplicates_per_second = runners.duplicates_per_second;
    status.last_checkpoint = runners
        .last_checkpoint
        .clone()
        .or_else(|| old.last_checkpoint.clone());
    status.alerts = alerts::evaluate(pipeline.spec.alerts.as_ref(), status, &old.alerts, now);
    // A pod that cannot run says why better than its silent `/status`.
    let stuck: Vec<&PodProblem> = pod_problems.iter().filter(|p| p.persistent).collect();

    let ready = if let Some(first) = pod_problems.first() {
        let mut message = format!("{}/{desired} runners ready", runners.ready);
        for problem in pod_problems
            .iter()
            .map(|p| &p.message)
            .chain(&runners.errors)
        {
            message.push_str("; ");
            message.push_str(problem);
        }
        Desired::new(READY, false, first.reason, message)
    } else if runners.ready == desired {
        Desired::new(
            READY,
            true,
            "RunnersReady",
            format!("{desired}/{desired} runners ready"),
        )
    } else {
        let reason = if runners.errors.is_empty() {
            "RunnersStarting"
        } else {
            "RunnerError"
        };
        let mut message = format!("{}/{desired} runners ready", runners.ready);
        for problem in runners.errors.iter().chain(&runners.unreachable) {
            message.push_str("; ");
            message.push_str(problem);
        }
        Desired::new(READY, false, reason, message)
    };
    let rollout = stateful_set.status.as_ref().and_then(|s| {
        let revisions_differ =
            s.update_revision.is_some() && s.update_revision != s.current_revision;
        let behind = s.observed_generation < stateful_set.metadata.generation;
        (revisions_differ || behind).then(|| {
            format!(
                "rolling out the new runner configuration: {}/{desired} replicas updated",
                s.updated_replicas.unwrap_or(0)
            )
        })
    });
    let progressing = match rollout {
        // Kubernetes' own convention for a rollout that cannot go on.
        _ if !stuck.is_empty() => Desired::new(
            PROGRESSING,
            false,
            stuck[0].reason,
            format!("runners cannot start: {}", messages(stuck.iter().copied())),
        ),
        Some(message) => Desired::new(PROGRESSING, true, "RollingUpdate", message),
        None if runners.ready < desired => Desired::new(
            PROGRESSING,
            true,
            pod_problems.first().map_or("RunnersStarting", |p| p.reason),
            match pod_problems {
                [] => format!("waiting for runners: {}/{desired} ready", runners.ready),
                problems => format!(
                    "waiting for runners: {}/{desired} ready; {}",
                    runners.ready,
                    messages(problems)
                ),
            },
        ),
        None => Desired::new(
            PROGRESSING,
            false,
            "RunnersUpToDate",
            "every runner runs the current spec",
        ),
    };
    let alert_messages = status
        .alerts
        .iter()
        .map(alerts::describe)
        .collect::<Vec<_>>();
    let degraded = if let Some(first) = stuck.first() {
        let message = stuck
            .iter()
            .map(|p| p.message.clone())
            .chain(alert_messages)
            .collect::<Vec<_>>()
            .join("; ");
        Desired::new(DEGRADED, true, first.reason, message)
    } else if !alert_messages.is_empty() {
        Desired::new(
            DEGRADED,
            true,
            "AlertThresholdExceeded",
            alert_messages.join("; "),
        )
    } else if !runners.errors.is_empty() {
        Desired::new(DEGRADED, true, "RunnerError", runners.errors.join("; "))
    } else {
        Desired::new(
            DEGRADED,
            false,
            "WithinThresholds",
            "no alert threshold exceeded",
        )
    };
    status.phase = Some(if degraded.is_true() {
        Phase::Degraded
    } else if ready.is_true() {
        Phase::Running
    } else {
        Phase::Pending
    });
    for desired in [ready, progressing, degraded] {
        conditions::set(&mut status.conditions, desired, generation, &time);
    }
}

/// The messages of `problems`, in one line.
fn messages<'a>(problems: impl IntoIterator<Item = &'a PodProblem>) -> String {
    problems
        .into_iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Events for changes of the Ready condition (alerts have their own).
fn condition_events(old: &StreamPipelineStatus, new: &StreamPipelineStatus, events: &mut Events) {
    let Some(ready) = conditions::get(&new.conditions, READY) else {
        return;
    };
    let before = conditions::get(&old.conditions, READY);
    if before.is_some_and(|b| b.status == ready.status && b.reason == ready.reason) {
        return;
    }
    // A rescale's start is this Event (reason `Rescaling`), its end `Rescaled`.
    let healthy = ready.status == "True"
        || matches!(
            ready.reason.as_str(),
            "Suspended" | "RunnersStarting" | rescale::RESCALING
        );
    let type_ = if healthy {
        EventType::Normal
    } else {
        EventType::Warning
    };
    events.push(event(type_, &ready.reason, ready.message.clone()));
}

async fn write_status(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
    old: &StreamPipelineStatus,
    status: &StreamPipelineStatus,
) -> Result<(), Error> {
    if status == old {
        return Ok(());
    }
    let name = pipeline.name_any();
    let mut body = serde_json::to_value(status).map_err(Error::Serialize)?;
    let previous = serde_json::to_value(old).map_err(Error::Serialize)?;
    null_dropped_fields(&previous, &mut body);
    let patch = serde_json::json!({
        "apiVersion": StreamPipeline::api_version(&()),
        "kind": StreamPipeline::kind(&()),
        "status": body,
    });
    Api::<StreamPipeline>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(error::api("update status of", "StreamPipeline", &name))?;
    Ok(())
}

/// Sets to null, in `new`, every object field `old` has and `new` lacks, so
/// the status write removes it whether the server merges (as a merge patch
/// does) or replaces what this field manager owns (server-side apply).
fn null_dropped_fields(old: &serde_json::Value, new: &mut serde_json::Value) {
    if let (Some(old), Some(new)) = (old.as_object(), new.as_object_mut()) {
        for (key, old_value) in old {
            match new.get_mut(key) {
                Some(new_value) => null_dropped_fields(old_value, new_value),
                None => {
                    new.insert(key.clone(), serde_json::Value::Null);
                }
            }
        }
    }
}

/// Publishes Events; a failure is logged, never fails the reconcile.
async fn publish(ctx: &Context, pipeline: &StreamPipeline, events: Events) {
    let reference = pipeline.object_ref(&());
    for event in events {
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(pipeline = %pipeline.name_any(), reason = %event.reason, %error, "cannot publish Event");
        }
    }
}

async fn server_side_apply<K>(ctx: &Context, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.name_any();
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(error::api(
            "apply",
            <K as k8s_openapi::Resource>::KIND,
            &name,
        ))
}

/// Starts webhook deliveries for fired and cleared alerts (in the background).
async fn notify_webhooks(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
    transitions: &alerts::Transitions,
    now: Timestamp,
) {
    let Some(hooks) = pipeline.spec.alerts.as_ref().map(|a| &a.webhooks) else {
        return;
    };
    if hooks.is_empty() || (transitions.fired.is_empty() && transitions.cleared.is_empty()) {
        return;
    }
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    for (i, hook) in hooks.iter().enumerate() {
        let reference = &hook.url_secret_ref;
        let label = format!(
            "{namespace}/{} webhook {i} (Secret {}/{})",
            pipeline.name_any(),
            reference.name,
            reference.key
        );
        let url = match secret_data(&secrets, &reference.name).await {
            Ok(Some(data)) => data.get(&reference.key).cloned(),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%label, %error, "cannot read the webhook URL");
                continue;
            }
        };
        let Some(url) = url else {
            tracing::warn!(%label, "webhook URL Secret or key is missing");
            continue;
        };
        let notices = transitions
            .fired
            .iter()
            .map(|a| (a, AlertState::Firing))
            .chain(
                transitions
                    .cleared
                    .iter()
                    .map(|a| (a, AlertState::Resolved)),
            );
        for (alert, state) in notices {
            let notice = AlertNotice::new(
                namespace,
                &pipeline.name_any(),
                alert,
                state,
                now.to_string(),
            );
            ctx.webhooks
                .notify(url.trim().to_owned(), label.clone(), notice);
        }
    }
}

/// A Secret's data as text, or None when it does not exist.
async fn secret_data(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(error::api("get", "Secret", name))?;
    Ok(secret.map(|secret| {
        let mut data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
        for (key, value) in secret.data.unwrap_or_default() {
            data.insert(key, String::from_utf8_lossy(&value.0).into_owned());
        }
        data
    }))
}

/// On delete: keep or delete the checkpoints, as `retainOnDelete` says.
async fn cleanup(
    pipeline: &StreamPipeline,
    ctx: &Context,
    namespace: &str,
) -> Result<Action, Error> {
    let checkpoint = &pipeline.spec.checkpoint;
    let uri = &checkpoint.uri;
    let outcome = if checkpoint.retain_on_delete {
        event(
            EventType::Normal,
            "CheckpointsRetained",
            format!("checkpoints under {uri} are kept (retainOnDelete)"),
        )
    } else if validate::checkpoint_uri(&pipeline.spec).is_some() {
        event(
            EventType::Warning,
            "CheckpointsNotDeleted",
            format!("{uri} is not object storage the controller can reach; delete it by hand"),
        )
    } else {
        let settings = match &checkpoint.credentials_secret_ref {
            Some(secret) => {
                let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
                secret_data(&secrets, &secret.name)
                    .await?
                    .unwrap_or_default()
            }
            None => BTreeMap::new(),
        };
        match checkpoints::delete_all(uri, &settings).await {
            Ok(count) => event(
                EventType::Normal,
                "CheckpointsDeleted",
                format!("deleted {count} checkpoint objects under {uri} (retainOnDelete: false)"),
            ),
            Err(source) => {
                let note = format!("cannot delete checkpoints under {uri}: {source}; retrying");
                publish(
                    ctx,
                    pipeline,
                    vec![event(EventType::Warning, "CheckpointDeleteFailed", note)],
                )
                .await;
                return Err(Error::CheckpointDelete {
                    uri: uri.clone(),
                    source,
                });
            }
        }
    };
    publish(ctx, pipeline, vec![outcome]).await;
    ctx.metrics.set_lag(namespace, &pipeline.name_any(), None);
    ctx.metrics
        .set_runners(namespace, &pipeline.name_any(), None);
    Ok(Action::await_change())
}
