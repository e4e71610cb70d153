//! A real ClickHouse server (Debian's `clickhouse-server` package, installed by
//! `tests/scripts/setup.d/30-clickhouse.sh`) started by the test itself on a
//! scratch directory and free ports on 127.0.0.1, and killed when dropped.

use std::{
    path::Path,
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

/// One running ClickHouse server.
pub struct ClickHouse {
    child: Child,
    dir: TempDir,
    http_port: u16,
    http: reqwest::Client,
}

impl ClickHouse {
    /// Starts a server and waits until `/ping` answers. Panics with the server's
    /// log when it cannot start.
    pub async fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start().await {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "clickhouse-server did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    async fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-clickhouse-")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        let http_port = crate::net::free_port();
        let tcp_port = crate::net::free_port();
        let interserver_port = crate::net::free_port();
        let path = dir.path().display();
        let child = Command::new("clickhouse-server")
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
            .arg(format!("--tcp_port={tcp_port}"))
            .arg(format!("--interserver_http_port={interserver_port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot run clickhouse-server (run tests/scripts/setup.sh): {e}")
            })?;
        let mut server = Self {
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

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.err.log")).unwrap_or_default()
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
        let response = self
            .http
            .post(self.url())
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
    /// is appended; 64-bit integers come back as strings, as ClickHouse sends them).
    pub async fn rows(&self, select: &str) -> Vec<serde_json::Value> {
        self.query(&format!("{select} FORMAT JSONEachRow"))
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
