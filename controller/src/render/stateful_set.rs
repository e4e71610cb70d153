//! The runners: a StatefulSet of `parallelism` pods (zero when suspended or
//! while a rescale stops them), each knowing its replica index from its pod
//! ordinal.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, LocalObjectReference,
            ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceFieldSelector, SeccompProfile, SecretEnvSource, SecretKeySelector,
            SecretVolumeSource, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use kube::Resource;
use sluice_crds::{MEMORY_LIMIT_ENV, SECRETS_DIR, StreamPipeline, secret_env_var};

use crate::Settings;

use super::{
    CONFIG_FILE, CONFIG_KEY, Names, Runners, SecretReference, SecretUse, owned_meta,
    selector_labels,
};

/// The runner's HTTP port: `/healthz`, `/readyz`, `/metrics`, `/status`.
pub const HTTP_PORT: i32 = 8080;
/// Pod template annotation holding the hash of the rendered pipeline.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.dev/config-hash";
/// The runner's parallelism in its environment: the `N` of `p % N`.
pub const REPLICAS_ENV: &str = "SLUICE_REPLICAS";
/// The runner pod's one container.
const RUNNER_CONTAINER: &str = "runner";
/// The pod-index label the StatefulSet controller puts on each pod.
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub(super) fn render(
    pipeline: &StreamPipeline,
    settings: &Settings,
    config_hash: &str,
    runners: Runners,
    secrets: &[SecretReference],
) -> StatefulSet {
    let default_image = settings.runner_image.as_str();
    let spec = &pipeline.spec;
    let mut template_meta = owned_meta(pipeline, String::new());
    template_meta.name = None;
    template_meta.namespace = None;
    template_meta.owner_references = None;
    template_meta.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        config_hash.to_owned(),
    )]));
    let (volumes, mounts) = volumes(pipeline, secrets);
    StatefulSet {
        metadata: owned_meta(pipeline, Names::stateful_set(pipeline)),
        spec: Some(StatefulSetSpec {
            replicas: Some(runners.replicas),
            service_name: Some(Names::service(pipeline)),
            // Replicas are independent: start and stop them together. A
            // rescale's drain then stops every runner at once (OrderedReady
            // would stop them one after the other, each waiting for the one
            // above it to be gone), and the new set starts at once.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(pipeline)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(PodSpec {
                    service_account_name: Some(Names::service_account(pipeline)),
                    automount_service_account_token: Some(false),
                    image_pull_secrets: (!settings.runner_image_pull_secrets.is_empty()).then(
                        || {
                            settings
                                .runner_image_pull_secrets
                                .iter()
                                .map(|name| LocalObjectReference { name: name.clone() })
                                .collect()
                        },
                    ),
                    // No fixed UID: the image's numeric USER applies, or the one
                    // the platform assigns (OpenShift's restricted SCC picks one
                    // per namespace). Secret files are readable by any UID.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container(pipeline, default_image, mounts, runners, secrets)],
                    volumes: Some(volumes),
                    node_selector: (!spec.runner.node_selector.is_empty())
                        .then(|| spec.runner.node_selector.clone()),
                    tolerations: (!spec.runner.tolerations.is_empty())
                        .then(|| spec.runner.tolerations.clone()),
                    // Time to finish the epoch in flight and checkpoint it
                    // on SIGTERM (an epoch is bounded by maxOffsetsPerTrigger
                    // and takes seconds). A runner killed after it only costs
                    // a replay of the planned epoch, never a wrong result; a
                    // drain waits for this long at most per rescale.
                    termination_grace_period_seconds: Some(60),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn container(
    pipeline: &StreamPipeline,
    default_image: &str,
    mounts: Vec<VolumeMount>,
    runners: Runners,
    secrets: &[SecretReference],
) -> Container {
    let spec = &pipeline.spec;
    let (env, env_from) = environment(pipeline, runners, secrets);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    Container {
        name: RUNNER_CONTAINER.into(),
        image: Some(
            spec.runner
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_owned()),
        ),
        args: Some(vec!["run".into(), CONFIG_FILE.into()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            ..ContainerPort::default()
        }]),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        volume_mounts: Some(mounts),
        resources: spec.runner.resources.clone(),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe {
            failure_threshold: Some(6),
            ..probe("/healthz")
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The runner's environment: identity, listen address, and the Secrets
/// passed by reference (`secretKeyRef`, `envFrom`). The log filter is in the
/// manifest (`spec.runner.logLevel`).
fn environment(
    pipeline: &StreamPipeline,
    runners: Runners,
    secrets: &[SecretReference],
) -> (Vec<EnvVar>, Vec<EnvFromSource>) {
    let mut env = vec![
        EnvVar {
            name: "SLUICE_REPLICA".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{POD_INDEX_LABEL}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        value(REPLICAS_ENV, runners.parallelism.to_string()),
        value("SLUICE_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
        value(
            "SLUICE_PIPELINE_UID",
            pipeline.meta().uid.clone().unwrap_or_default(),
        ),
        // The root file system is read-only; scratch files go to the emptyDir.
        value("TMPDIR", "/tmp"),
        // The container's memory limit (the node's allocatable memory when
        // none is set): the runner sizes its epochs from it.
        EnvVar {
            name: MEMORY_LIMIT_ENV.into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(RUNNER_CONTAINER.into()),
                    resource: "limits.memory".into(),
                    divisor: Some(Quantity("1".into())),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    let mut env_from: Vec<EnvFromSource> = Vec::new();
    let mut seen_env = BTreeSet::new();
    for reference in secrets {
        match reference.usage {
            SecretUse::Env => {
                for key in &reference.keys {
                    let name = secret_env_var(&reference.secret, key);
                    if seen_env.insert(name.clone()) {
                        env.push(EnvVar {
                            name,
                            value_from: Some(EnvVarSource {
                                secret_key_ref: Some(SecretKeySelector {
                                    name: reference.secret.clone(),
                                    key: key.clone(),
                                    optional: Some(false),
                                }),
                                ..EnvVarSource::default()
                            }),
                            ..EnvVar::default()
                        });
                    }
                }
            }
            SecretUse::EnvFrom => {
                let source = EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: reference.secret.clone(),
                        optional: Some(false),
                    }),
                    ..EnvFromSource::default()
                };
                if !env_from.contains(&source) {
                    env_from.push(source);
                }
            }
            SecretUse::File | SecretUse::Controller => {}
        }
    }
    (env, env_from)
}

/// The manifest, a writable `/tmp`, and one read-only volume per Secret
/// referenced by key, holding only the referenced keys.
fn volumes(
    pipeline: &StreamPipeline,
    secrets: &[SecretReference],
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "pipeline".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::config_map(pipeline),
                items: Some(vec![KeyToPath {
                    key: CONFIG_KEY.into(),
                    path: CONFIG_KEY.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let config_dir = CONFIG_FILE.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let mut mounts = vec![
        VolumeMount {
            name: "pipeline".into(),
            mount_path: config_dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let mut keys_by_secret: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for reference in secrets {
        if reference.usage == SecretUse::File {
            keys_by_secret
                .entry(reference.secret.clone())
                .or_default()
                .extend(reference.keys.iter().cloned());
        }
    }
    for (i, (secret, keys)) in keys_by_secret.into_iter().enumerate() {
        let name = format!("secret-{i}");
        mounts.push(VolumeMount {
            name: name.clone(),
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name,
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                items: Some(
                    keys.into_iter()
                        .map(|key| KeyToPath {
                            path: key.clone(),
                            key,
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                // Readable whatever UID the runner gets (no fsGroup); the pod
                // has one container, which alone mounts them.
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        });
    }
    (volumes, mounts)
}
