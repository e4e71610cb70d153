//! A real OpenSearch-compatible server: `osmem-server` from PyPI (installed
//! by `tests/scripts/setup.d/10-python.sh`, linked into `$SLUICE_CACHE/bin`),
//! in memory, with OpenSearch's `_bulk` semantics, per-item errors, mappings
//! and id rules. The test starts its own on a free port; it exits when its
//! stdin closes, so it also ends when the test process dies.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

pub use crate::elasticsearch::Document;

const START_DEADLINE: Duration = Duration::from_secs(30);

/// One running server; killed when dropped.
pub struct OpenSearch {
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: Option<ChildStdin>,
    url: String,
    http: reqwest::Client,
}

impl OpenSearch {
    /// Starts a server and waits for the URL it prints. Panics with the
    /// reason when it cannot start.
    pub fn start() -> Self {
        let mut child = Command::new("osmem-server")
            .args(["-addr", "127.0.0.1:0", "-no-ja"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start osmem-server ({e}); run tests/scripts/setup.sh")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let read = BufReader::new(stdout).read_line(&mut first);
            let _ = sender.send(read.map(|_| first));
        });
        let line = match receiver.recv_timeout(START_DEADLINE) {
            Ok(Ok(line)) => line,
            other => {
                let _ = child.kill();
                panic!("osmem-server did not print its URL within {START_DEADLINE:?}: {other:?}");
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("osmem-server printed {line:?}, not its JSON ({e})"));
        let url = ready["url"]
            .as_str()
            .unwrap_or_else(|| panic!("osmem-server printed no url: {line}"))
            .to_owned();
        Self {
            _stdin: child.stdin.take(),
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// Base URL, for example `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates `index` with `mappings` (the `mappings` object of the create
    /// index API).
    pub async fn create_index(&self, index: &str, mappings: Value) {
        let response = self
            .http
            .put(format!("{}/{index}", self.url))
            .json(&serde_json::json!({ "mappings": mappings }))
            .send()
            .await
            .expect("create index");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "create index {index}: {status} {body}");
    }

    /// Every document of `index` by id, after a refresh; empty when the
    /// index does not exist.
    pub async fn documents(&self, index: &str) -> BTreeMap<String, Document> {
        let refresh = self
            .http
            .post(format!("{}/{index}/_refresh", self.url))
            .send()
            .await
            .expect("refresh");
        if refresh.status() == reqwest::StatusCode::NOT_FOUND {
            return BTreeMap::new();
        }
        let found: Value = self
            .http
            .get(format!("{}/{index}/_search", self.url))
            .query(&[("size", "10000"), ("version", "true")])
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("search answers JSON");
        let hits = found["hits"]["hits"]
            .as_array()
            .unwrap_or_else(|| panic!("search of {index} answered {found}"));
        hits.iter()
            .map(|hit| {
                let id = hit["_id"].as_str().expect("hit _id").to_owned();
                let document = Document {
                    source: hit["_source"].clone(),
                    version: hit["_version"].as_u64().expect("hit _version"),
                };
                (id, document)
            })
            .collect()
    }
}

impl Drop for OpenSearch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
