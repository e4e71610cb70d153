//! A real S3 endpoint: `moto_server` from the test venv
//! (`tests/scripts/setup.d/10-python.sh`), started on a free port of
//! 127.0.0.1 with one bucket, and killed when dropped. Clients reach it
//! through a [`Front`], so that a test can cut it off ([`MotoS3::cut_off`])
//! and restore it: moto keeps its objects in memory only, so an outage must
//! never restart it.

use std::{
    collections::HashMap,
    io,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::front::Front;

const START_DEADLINE: Duration = Duration::from_secs(60);
/// A port picked as free may be taken by someone else before the server binds it.
const START_ATTEMPTS: usize = 3;
/// moto accepts any credentials; these keep clients from looking for real ones.
const ACCESS_KEY: &str = "sluice-test";
const SECRET_KEY: &str = "sluice-test-secret";
const REGION: &str = "us-east-1";

/// One running moto S3 server with one bucket.
pub struct MotoS3 {
    child: Child,
    /// What clients connect to; it forwards to moto's own port.
    front: Front,
    endpoint: String,
    bucket: String,
}

impl MotoS3 {
    /// Starts `moto_server`, waits until it answers and creates `bucket`.
    /// Panics when it cannot start.
    pub async fn start(bucket: &str) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(bucket).await {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("moto_server did not start:\n{}", failures.join("\n---\n"));
    }

    async fn try_start(bucket: &str) -> Result<Self, String> {
        let port = crate::net::free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run moto_server (run tests/scripts/setup.sh): {e}"))?;
        let front = Front::plain(port).map_err(|e| format!("cannot start moto's front: {e}"))?;
        let mut server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{}", front.port()),
            front,
            bucket: bucket.to_owned(),
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("moto_server exited with {status}"));
            }
            // Creating the bucket is the readiness probe: it succeeds once the server answers.
            let created = http
                .put(format!("{}/{bucket}", server.endpoint))
                .send()
                .await;
            if let Ok(response) = created
                && response.status().is_success()
            {
                return Ok(server);
            }
            if started.elapsed() > START_DEADLINE {
                return Err(format!(
                    "no answer on {} within {START_DEADLINE:?}",
                    server.endpoint
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An object-store outage as clients see it: open connections are
    /// closed and new ones refused until [`MotoS3::restore`], while moto
    /// keeps every object.
    pub fn cut_off(&self) {
        self.front.cut_off();
    }

    /// Ends an outage begun by [`MotoS3::cut_off`].
    pub fn restore(&self) -> io::Result<()> {
        self.front.restore()
    }

    /// `http://127.0.0.1:<port>` (of the front).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://<bucket>/<path>`.
    pub fn uri(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, path.trim_start_matches('/'))
    }

    /// The `AWS_*` environment that points S3 clients (object_store,
    /// deltalake, a runner process) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
        ]
    }
}

impl MotoS3 {
    /// [`MotoS3::env`] as storage options (for reading a Delta table).
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.env()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }
}

/// `moto_server` from `$SLUICE_VENV` (see tests/scripts/env.sh), else from PATH.
fn moto_server() -> PathBuf {
    let venv = std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cache/sluice/venv"))
        });
    venv.map(|v| v.join("bin/moto_server"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("moto_server"))
}

impl Drop for MotoS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
