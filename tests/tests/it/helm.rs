//! The chart as a platform team checks it, with the real tools: `helm lint
//! --strict` and `helm template` for every notable value set
//! (charts/sluice/ci/*-values.yaml, as chart-testing reads them), each
//! rendering validated by `kubernetes-validate` against the Kubernetes schemas
//! of the oldest and newest supported versions; then what the renderings
//! must say (RBAC, the namespaced install, the runner settings, the CRD's
//! protection, the upgrade instructions).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Command,
};

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_controller::permissions::{LEASE_BY_NAME, LEASE_CREATE, PERMISSIONS};
use sluice_tests::tools::{run, tool};

pub use crate::chart::{chart, repo_root};

pub const RELEASE: &str = "sluice";
pub const NAMESPACE: &str = "sluice-system";
/// The chart's `kubeVersion` floor, and kubernetes-validate's newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// `helm template` of the chart with `args` (CRDs included), as YAML text.
fn template_text(args: &[&str]) -> String {
    run(
        Command::new(tool("helm"))
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--namespace", NAMESPACE, "--include-crds"])
            .args(args),
        None,
    )
}

/// The objects `helm template` renders with `args`.
pub fn render(args: &[&str]) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&template_text(args))
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()
        .expect("helm template renders YAML")
        .into_iter()
        .filter(|object| !object.is_null())
        .collect()
}

/// "default" and each charts/sluice/ci/*-values.yaml.
fn value_sets() -> Vec<(String, Vec<String>)> {
    let mut sets = vec![("default".to_owned(), Vec::new())];
    let mut files: Vec<PathBuf> = fs::read_dir(chart().join("ci"))
        .expect("charts/sluice/ci")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        sets.push((name, vec!["-f".to_owned(), file.display().to_string()]));
    }
    sets
}

fn values_file(name: &str) -> Vec<String> {
    let path = chart().join("ci").join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    vec!["-f".to_owned(), path.display().to_string()]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn every_value_set_lints_strictly_and_renders_manifests_kubernetes_accepts() {
    let sets = value_sets();
    assert!(sets.len() >= 6, "expected the ci/ value sets: {sets:?}");
    let validate = tool("kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in sets {
        let linted = run(
            Command::new(tool("helm"))
                .args(["lint", "--strict", "--namespace", NAMESPACE])
                .arg(chart())
                .args(&args),
            None,
        );
        assert!(linted.contains("0 chart(s) failed"), "{name}: {linted}");
        let rendered = template_text(&strs(&args));
        let file = dir.path().join(format!("{name}.rendered.yaml"));
        fs::write(&file, &rendered).unwrap();
        for version in KUBERNETES_VERSIONS {
            let report = run(
                Command::new(&validate)
                    .args(["--strict", "--kubernetes-version", version])
                    .arg(&file),
                None,
            );
            // Only the Prometheus Operator's kinds have no schema here;
            // promtool checks the rules (alerts.rs).
            for line in report.lines().filter(|l| !l.starts_with("INFO")) {
                assert!(
                    line.contains("Couldn't find schema for kind")
                        && line.contains("monitoring.coreos.com"),
                    "{name} on Kubernetes {version}: {line}"
                );
            }
            assert!(
                report
                    .lines()
                    .any(|l| l.starts_with("INFO") && l.contains("passed")),
                "{name}: kubernetes-validate checked nothing:\n{report}"
            );
        }
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// (group, resource, verb) triples of RBAC rules, with resourceNames if any.
fn grants(rules: &Value) -> BTreeSet<(String, String, String, Vec<String>)> {
    let list = |rule: &Value, key: &str| -> Vec<String> {
        rule[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut set = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in list(rule, "apiGroups") {
            for resource in list(rule, "resources") {
                for verb in list(rule, "verbs") {
                    set.insert((
                        group.clone(),
                        resource.clone(),
                        verb,
                        list(rule, "resourceNames"),
                    ));
                }
            }
        }
    }
    set
}

fn env_of(deployment: &Value) -> BTreeMap<String, Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
        .collect()
}

#[test]
fn rendered_rbac_is_the_controllers_calls_and_only_its_own_lease() {
    let objects = render(&[]);
    let fullname = RELEASE; // the release name contains the chart name
    let cluster_role = named(&objects, "ClusterRole", fullname);
    let workload: BTreeSet<_> = PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.resources.iter().flat_map(move |r| {
                p.verbs.iter().map(move |v| {
                    (
                        p.api_group.to_owned(),
                        (*r).to_owned(),
                        (*v).to_owned(),
                        vec![],
                    )
                })
            })
        })
        .collect();
    assert_eq!(grants(&cluster_role["rules"]), workload);
    assert!(
        workload.contains(&("".into(), "pods".into(), "watch".into(), vec![]))
            && !workload
                .iter()
                .any(|(_, r, v, _)| r == "pods" && !["get", "list", "watch"].contains(&v.as_str())),
        "pods: exactly get, list and watch"
    );
    assert!(
        !workload.iter().any(|(g, ..)| g == "coordination.k8s.io"),
        "no Lease grants in the ClusterRole"
    );

    let deployment = named(&objects, "Deployment", fullname);
    let lease = env_of(deployment)["SLUICE_LEASE_NAME"]
        .as_str()
        .unwrap()
        .to_owned();
    let role = named(&objects, "Role", &format!("{fullname}-leader-election"));
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let by_name = LEASE_BY_NAME.verbs.iter().map(|v| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            (*v).to_owned(),
            vec![lease.clone()],
        )
    });
    let create = LEASE_CREATE.verbs.iter().map(|v| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            (*v).to_owned(),
            vec![],
        )
    });
    assert_eq!(grants(&role["rules"]), by_name.chain(create).collect());
    let binding = named(
        &objects,
        "RoleBinding",
        &format!("{fullname}-leader-election"),
    );
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);

    // The aggregated roles: view reads, edit writes StreamPipelines.
    let view = named(
        &objects,
        "ClusterRole",
        &format!("{fullname}-streampipelines-view"),
    );
    let labels = &view["metadata"]["labels"];
    for role in ["view", "edit", "admin"] {
        assert_eq!(
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{role}")],
            "true"
        );
    }
    let edit = named(
        &objects,
        "ClusterRole",
        &format!("{fullname}-streampipelines-edit"),
    );
    assert_eq!(
        edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        Value::Null
    );
    let verbs: BTreeSet<String> = grants(&edit["rules"])
        .into_iter()
        .map(|(_, _, v, _)| v)
        .collect();
    assert!(
        verbs.contains("create") && verbs.contains("delete"),
        "{verbs:?}"
    );
}

fn cluster_wide(object: &Value) -> bool {
    matches!(
        object["kind"].as_str(),
        Some("ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition" | "Namespace")
    )
}

#[test]
fn a_team_installs_the_namespaced_part_after_an_admin_installed_the_cluster_part() {
    // The admin's part: the CRD and the aggregated ClusterRoles, nothing else.
    let admin = render(&strs(&values_file("cluster-part-values.yaml")));
    let kinds: BTreeSet<&str> = admin.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ClusterRole", "CustomResourceDefinition"])
    );
    assert_eq!(of_kind(&admin, "ClusterRole").len(), 2);

    // The team's part (helm install --skip-crds): only objects in its namespace.
    let mut args = values_file("namespace-install-values.yaml");
    args.push("--skip-crds".to_owned());
    let team = serde_yaml::Deserializer::from_str(&run(
        Command::new(tool("helm"))
            .args(["template", RELEASE])
            .arg(chart())
            .args(["--namespace", "analytics"])
            .args(&args),
        None,
    ))
    .map(Value::deserialize)
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let team: Vec<Value> = team.into_iter().filter(|o| !o.is_null()).collect();
    assert!(!team.is_empty());
    for object in &team {
        assert!(
            !cluster_wide(object),
            "a namespaced install renders {}",
            object["kind"]
        );
        assert_eq!(
            object["metadata"]["namespace"], "analytics",
            "{}",
            object["kind"]
        );
    }
    let deployment = of_kind(&team, "Deployment")[0];
    assert_eq!(env_of(deployment)["SLUICE_WATCH_NAMESPACE"], "analytics");

    // A namespaced install with a cluster-wide scope is refused, with the reason.
    let refused = Command::new(tool("helm"))
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--set", "install=namespace"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs rbac.scope: namespace"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn pull_secrets_and_workload_identity_reach_the_runner_pods() {
    let objects = render(&strs(&values_file("private-registry-values.yaml")));
    let deployment = of_kind(&objects, "Deployment")[0];
    let controller_pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        controller_pod["imagePullSecrets"],
        json!([{"name": "regcred"}, {"name": "mirror-creds"}])
    );
    let env = env_of(deployment);
    let pull = env["SLUICE_RUNNER_IMAGE_PULL_SECRETS"].as_str().unwrap();
    assert_eq!(pull, "regcred,mirror-creds");
    let annotations: BTreeMap<String, String> = serde_json::from_str(
        env["SLUICE_RUNNER_SERVICE_ACCOUNT_ANNOTATIONS"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        annotations["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/sluice-runner"
    );

    // What the controller renders from those settings (main.rs reads the two
    // variables into these Settings fields).
    let settings = sluice_controller::Settings {
        runner_image: env["SLUICE_RUNNER_IMAGE"].as_str().unwrap().to_owned(),
        runner_image_pull_secrets: pull.split(',').map(str::to_owned).collect(),
        runner_service_account_annotations: annotations.clone(),
        ..sluice_controller::Settings::default()
    };
    let pipeline = sluice_crds::parse_pipeline(&fs::read_to_string(first_example()).unwrap())
        .expect("an example pipeline");
    let runners = sluice_controller::render::Runners::of(&pipeline);
    let rendered = sluice_controller::render::render(&pipeline, &settings, 0, runners).unwrap();
    let pod = rendered.stateful_set.spec.unwrap().template.spec.unwrap();
    let names: Vec<String> = pod
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["regcred", "mirror-creds"]);
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example.com/sluice/sluice-runner:0.1.0")
    );
    assert_eq!(
        rendered.service_account.metadata.annotations,
        Some(annotations)
    );

    // The binary reads exactly those variables.
    let main = fs::read_to_string(repo_root().join("controller/src/main.rs")).unwrap();
    for variable in [
        "SLUICE_RUNNER_IMAGE_PULL_SECRETS",
        "SLUICE_RUNNER_SERVICE_ACCOUNT_ANNOTATIONS",
    ] {
        assert!(
            main.contains(&format!("env = \"{variable}\"")),
            "{variable}"
        );
    }
}

/// Any manifest under examples/.
fn first_example() -> PathBuf {
    let mut examples: Vec<PathBuf> = fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    examples.into_iter().next().expect("an example")
}

#[test]
fn no_uid_is_fixed_and_pods_run_as_non_root() {
    for (name, args) in value_sets() {
        for object in render(&strs(&args)) {
            let Some(pod) = object["spec"]["template"]["spec"].as_object() else {
                continue;
            };
            let context = &pod["securityContext"];
            assert_eq!(context["runAsNonRoot"], true, "{name}");
            for key in ["runAsUser", "runAsGroup", "fsGroup"] {
                assert!(
                    context.get(key).is_none(),
                    "{name}: {key} is fixed: {context}"
                );
            }
        }
    }
}

#[test]
fn the_crd_survives_helm_uninstall_and_argocd_app_delete() {
    let objects = render(&[]);
    let crd = of_kind(&objects, "CustomResourceDefinition")[0];
    let annotations = &crd["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/resource-policy"], "keep");
    let options: BTreeSet<&str> = annotations["argocd.argoproj.io/sync-options"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(options, BTreeSet::from(["Prune=false", "Delete=false"]));
}

#[test]
fn upgrade_instructions_force_the_crd_and_keep_new_defaults() {
    let notes = fs::read_to_string(chart().join("templates/NOTES.txt")).unwrap();
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let gitops = fs::read_to_string(repo_root().join("docs/gitops.md")).unwrap();
    for (page, text) in [
        ("NOTES.txt", &notes),
        ("README.md", &readme),
        ("docs/gitops.md", &gitops),
    ] {
        for line in text.lines() {
            if line.contains("kubectl apply --server-side") && line.contains("crds/") {
                assert!(line.contains("--force-conflicts"), "{page}: {line}");
            }
            if line.trim_start().starts_with("helm upgrade") || line.contains("`helm upgrade") {
                assert!(
                    !line.contains(" --reuse-values"),
                    "{page}: --reuse-values drops the new chart's defaults: {line}"
                );
            }
        }
    }
    assert!(notes.contains("kubectl apply --server-side --force-conflicts"));
}
