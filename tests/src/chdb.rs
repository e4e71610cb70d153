//! The current ClickHouse engine for tests: `chdb-core` (pinned in
//! tests/requirements.txt, installed into the test venv by
//! tests/scripts/setup.d/10-python.sh) behind tests/servers/chdb_http.py, a
//! thin front that answers ClickHouse's HTTP interface. Started through
//! [`crate::clickhouse::ClickHouse::start_engine`], which waits for it and
//! kills it like the Debian server.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The front's script, in this crate's sources.
const FRONT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/servers/chdb_http.py");

/// The file the front writes its requests and failures to.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join("chdb_http.log")
}

/// The command that serves a chdb session on `dir/data` at `http_port`.
pub(crate) fn command(dir: &Path, http_port: u16) -> Result<Command, String> {
    let log = File::create(log_path(dir)).map_err(|e| format!("front log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| format!("front log: {e}"))?;
    let mut command = Command::new(crate::tools::tool("python3"));
    command
        .arg(FRONT)
        .arg(http_port.to_string())
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    Ok(command)
}
