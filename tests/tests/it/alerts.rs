//! The chart's PrometheusRule, rendered by the real `helm`, checked and
//! unit-tested by the real `promtool` (tests/promtool/sluice-alerts.test.yaml):
//! each alert fires and clears, an idle caught-up pipeline fires nothing, a
//! vanished runner fires, and restarts count Sluice's runner pods only.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use sluice_tests::tools::{run, tool};

use crate::helm::{render, repo_root};

/// The rule groups of the PrometheusRule, as a Prometheus rule file.
fn rendered_rules() -> String {
    let objects = render(&["--set", "prometheusRule.enabled=true"]);
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("prometheusRule.enabled renders a PrometheusRule");
    serde_yaml::to_string(&rule["spec"]).unwrap()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    fs::write(&rules, rendered_rules()).unwrap();
    let tests = repo_root().join("tests/promtool/sluice-alerts.test.yaml");
    fs::copy(&tests, dir.path().join("sluice-alerts.test.yaml")).unwrap();

    let promtool = tool("promtool");
    let checked = run(
        Command::new(&promtool).args(["check", "rules"]).arg(&rules),
        None,
    );
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(
        Command::new(&promtool).current_dir(dir.path()).args([
            "test",
            "rules",
            "sluice-alerts.test.yaml",
        ]),
        None,
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert of the chart has a unit test that expects it to fire and,
/// later, expects nothing (it clears).
#[test]
fn every_alert_is_tested_firing_and_clearing() {
    let rules: Value = serde_yaml::from_str(&rendered_rules()).unwrap();
    let tests: Value = serde_yaml::from_str(
        &fs::read_to_string(Path::new(&repo_root()).join("tests/promtool/sluice-alerts.test.yaml"))
            .unwrap(),
    )
    .unwrap();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for alert in alerts {
        let of_alert = || cases.iter().filter(move |c| c["alertname"] == alert);
        assert!(
            of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty())),
            "no test expects {alert} to fire"
        );
        assert!(
            of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(Vec::is_empty)),
            "no test expects {alert} to be quiet"
        );
    }
}
