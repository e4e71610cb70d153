//! Alert webhooks: fire and clear notices reach a local HTTP receiver that
//! fails at first, without holding up reconciliation.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::*;
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use sluice_controller::alerts::webhook::{AlertNotice, AlertState};
use sluice_crds::{AlertType, AlertWebhook, PartitionLag, RunnerStatus, SecretKeyRef};

/// Receives notices; answers 500 to the first `failures` calls.
#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<usize>>,
    failures: usize,
    accepted: Arc<Mutex<Vec<AlertNotice>>>,
}

async fn receive(State(receiver): State<Receiver>, Json(notice): Json<AlertNotice>) -> StatusCode {
    let mut calls = receiver.calls.lock().unwrap();
    *calls += 1;
    if *calls <= receiver.failures {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    receiver.accepted.lock().unwrap().push(notice);
    StatusCode::OK
}

fn lagging(records: i64) -> RunnerStatus {
    RunnerStatus {
        ready: true,
        replicas: 1,
        partitions: vec![PartitionLag {
            topic: "events".into(),
            partition: 0,
            records,
            seconds: 1.0,
        }],
        ..RunnerStatus::default()
    }
}

#[tokio::test]
async fn fire_and_clear_reach_the_webhook_after_it_first_fails() {
    let receiver = Receiver {
        failures: 2,
        ..Receiver::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks/sluice?token=t0ps3cret",
        listener.local_addr().unwrap()
    );
    let router = Router::new()
        .route("/hooks/sluice", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let runners = RunnerStatuses::default();
    let mut pipeline = pipeline("clickstream");
    pipeline.spec.parallelism = 1;
    pipeline.spec.alerts.as_mut().unwrap().webhooks = vec![AlertWebhook {
        url_secret_ref: SecretKeyRef {
            name: "alert-hook".into(),
            key: "url".into(),
        },
    }];
    let mut secrets = pipeline_secrets();
    secrets.push(secret("alert-hook", &[("url", &url)]));
    let ctx = context(
        fake_api(vec![pipeline], secrets).await,
        runners.serve().await,
    );

    runners.set("clickstream-0", lagging(5000));
    reconcile_stored(&ctx, "clickstream").await.unwrap();
    let started = Instant::now();
    reconcile_stored(&ctx, "clickstream").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "reconcile does not wait for webhook retries"
    );

    let fired = eventually(Duration::from_secs(60), "the firing notice", || async {
        receiver.accepted.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(fired.state, AlertState::Firing);
    assert_eq!(fired.alert, AlertType::Lag);
    assert_eq!(
        (fired.pipeline.as_str(), fired.namespace.as_str()),
        ("clickstream", NS)
    );
    assert_eq!((fired.value, fired.threshold), (5000.0, 1000.0));
    assert!(fired.time.parse::<jiff::Timestamp>().is_ok());
    assert_eq!(
        *receiver.calls.lock().unwrap(),
        3,
        "two 500s, then delivered"
    );

    runners.set("clickstream-0", lagging(3));
    reconcile_stored(&ctx, "clickstream").await.unwrap();
    let cleared = eventually(Duration::from_secs(60), "the resolved notice", || async {
        receiver.accepted.lock().unwrap().get(1).cloned()
    })
    .await;
    assert_eq!(cleared.state, AlertState::Resolved);
    assert_eq!(cleared.alert, AlertType::Lag);
    assert_eq!(
        receiver.accepted.lock().unwrap().len(),
        2,
        "one notice per transition"
    );
    // The URL (it embeds a token) appears in no Event.
    assert!(
        events(&ctx.client)
            .await
            .iter()
            .all(|(_, _, note)| !note.contains("t0ps3cret"))
    );
}
