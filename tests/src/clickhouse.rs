//! A real ClickHouse started by the test itself on a scratch directory and
//! free ports on 127.0.0.1, and killed when dropped: Debian's
//! `clickhouse-server` 18.16 (installed by `tests/scripts/setup.d/30-clickhouse.sh`)
//! or the current engine (chdb-core behind a thin HTTP front, see [`crate::chdb`]).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// The package's configuration; everything instance-specific is overridden on
/// the command line so the package's own service and data are never touched.
const PACKAGE_CONFIG: &str = "/etc/clickhouse-server/config.xml";
const START_DEADLINE: Duration = Duration::from_secs(60);
/// A port picked as free may be taken by someone else before the server binds it.
const START_ATTEMPTS: usize = 3;

/// Which ClickHouse answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Debian's `clickhouse-server` 18.16: before deduplication tokens.
    Debian18,
    /// The current engine: chdb-core 26.9 behind tests/servers/chdb_http.py.
    Current,
}

impl Engine {
    /// Every engine, for tests that hold on all of them.
    pub const ALL: [Engine; 2] = [Engine::Debian18, Engine::Current];
}

/// Debian's server on `dir`, with the package's configuration and
/// everything instance-specific overridden.
fn debian_command(dir: &Path, http_port: u16) -> Command {
    let path = dir.display();
    let mut command = Command::new("clickhouse-server");
    command
        .arg(format!("--config-file={PACKAGE_CONFIG}"))
        .arg("--")
        .arg(format!("--path={path}/"))
        .arg(format!("--tmp_path={path}/tmp/"))
        .arg(format!("--user_files_path={path}/user_files/"))
        .arg(format!("--format_schema_path={path}/format_schemas/"))
        .arg(format!("--logger.log={path}/server.log"))
        .arg(format!("--logger.errorlog={path}/server.err.log"))
        .arg("--listen_host=127.0.0.1")
        .arg(format!("--http_port={http_port}"))
        .arg(format!("--tcp_port={}", crate::net::free_port()))
        .arg(format!(
            "--interserver_http_port={}",
            crate::net::free_port()
        ))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// One running ClickHouse server.
pub struct ClickHouse {
    engine: Engine,
    child: Child,
    dir: TempDir,
    http_port: u16,
    http: reqwest::Client,
}

impl ClickHouse {
    /// Starts Debian's 18.16 server; see [`ClickHouse::start_engine`].
    pub async fn start() -> Self {
        Self::start_engine(Engine::Debian18).await
    }

    /// Starts `engine` and waits until `/ping` answers. Panics with the
    /// server's log when it cannot start.
    pub async fn start_engine(engine: Engine) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(engine).await {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "ClickHouse ({engine:?}) did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    async fn try_start(engine: Engine) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-clickhouse-")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        let http_port = crate::net::free_port();
        let mut command = match engine {
            Engine::Debian18 => debian_command(dir.path(), http_port),
            Engine::Current => crate::chdb::command(dir.path(), http_port)?,
        };
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {command:?} (run tests/scripts/setup.sh): {e}"))?;
        let mut server = Self {
            engine,
            child,
            dir,
            http_port,
            http: reqwest::Client::new(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}:\n{}", self.error_log()));
            }
            let ping = self.http.get(format!("{}/ping", self.url())).send().await;
            if matches!(ping, Ok(ref response) if response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer on /ping within {START_DEADLINE:?}:\n{}",
                    self.error_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's error log (the front's log for the current engine).
    pub fn error_log(&self) -> String {
        let path: PathBuf = match self.engine {
            Engine::Debian18 => self.dir.path().join("server.err.log"),
            Engine::Current => crate::chdb::log_path(self.dir.path()),
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Which engine this is.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The HTTP interface, for example `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The scratch directory holding the server's data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one statement over HTTP and returns the response body; panics with
    /// the server's message when the statement fails.
    pub async fn query(&self, sql: &str) -> String {
        self.query_with(sql, &[]).await
    }

    /// [`ClickHouse::query`] with settings as URL parameters.
    pub async fn query_with(&self, sql: &str, settings: &[(&str, &str)]) -> String {
        let response = self
            .http
            .post(self.url())
            .query(settings)
            .body(sql.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ClickHouse request failed: {e}"));
        let status = response.status();
        let body = response.text().await.expect("ClickHouse response body");
        assert!(
            status.is_success(),
            "ClickHouse refused `{sql}`: {status}: {body}"
        );
        body
    }

    /// Runs a `SELECT` and returns its rows as JSON objects (`FORMAT JSONEachRow`
    /// is appended; 64-bit integers come back as strings on every engine, as
    /// 18.16 sends them by default).
    pub async fn rows(&self, select: &str) -> Vec<serde_json::Value> {
        self.query_with(
            &format!("{select} FORMAT JSONEachRow"),
            &[("output_format_json_quote_64bit_integers", "1")],
        )
        .await
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSONEachRow line"))
        .collect()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        // Killing is enough: the data directory is scratch and goes with `dir`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP front before a ClickHouse server that lets a number of INSERTs
/// through, then holds every further INSERT unanswered (other requests
/// pass): a writer stopped in the middle of a multi-block epoch, for as
/// long as the test needs to kill it there. A real server offers no such
/// pause point. Stops when dropped.
pub struct InsertGate {
    server: crate::net::StatefulServer<GateState>,
}

struct GateState {
    backend: String,
    http: reqwest::Client,
    /// INSERTs let through before the gate holds them (`None`: no limit).
    inserts_allowed: Option<usize>,
    inserts_passed: usize,
    inserts_held: usize,
}

type Gate = std::sync::Arc<std::sync::Mutex<GateState>>;

impl InsertGate {
    /// A gate before `server` that lets `inserts` INSERTs through.
    pub async fn start(server: &ClickHouse, inserts: usize) -> Self {
        let state = GateState {
            backend: server.url(),
            http: reqwest::Client::new(),
            inserts_allowed: Some(inserts),
            inserts_passed: 0,
            inserts_held: 0,
        };
        let router = axum::Router::new().route("/", axum::routing::post(forward));
        Self {
            server: crate::net::StatefulServer::start(state, router).await,
        }
    }

    /// The URL writers use instead of the server's.
    pub fn url(&self) -> String {
        self.server.url().to_owned()
    }

    /// INSERTs the server answered so far.
    pub fn inserts_passed(&self) -> usize {
        self.server.lock().inserts_passed
    }

    /// Waits (two minutes at most) until an INSERT is held, and panics if none is.
    pub async fn wait_until_holding(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.server.lock().inserts_held == 0 {
            assert!(
                Instant::now() < deadline,
                "no INSERT reached the gate after {} passed",
                self.inserts_passed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets every later request through.
    pub fn open(&self) {
        self.server.lock().inserts_allowed = None;
    }
}

async fn forward(
    axum::extract::State(gate): axum::extract::State<Gate>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    let query = query.unwrap_or_default();
    let insert = query.starts_with("query=INSERT");
    let passage = {
        let mut state = gate.lock().expect("gate state lock");
        let allowed = state.inserts_allowed;
        if insert && allowed.is_some_and(|n| state.inserts_passed >= n) {
            state.inserts_held += 1;
            None
        } else {
            Some((state.http.clone(), format!("{}/?{query}", state.backend)))
        }
    };
    let Some((http, url)) = passage else {
        // Held until the writer gives up on the request (it is killed).
        return std::future::pending().await;
    };
    let mut request = http.post(url).body(body);
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let answer = match request.send().await {
        Ok(response) => {
            let status = axum::http::StatusCode::from_u16(response.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if insert && answer.0.is_success() {
        gate.lock().expect("gate state lock").inserts_passed += 1;
    }
    answer
}
