//! The command-line tools the chart, alert and docs tests run: `helm`,
//! `promtool`, `lua5.4` (tests/scripts/setup.d/40-ops-tools.sh) and
//! `kubernetes-validate` (tests/requirements.txt), all under `$SLUICE_CACHE`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn cache_dir() -> PathBuf {
    match std::env::var_os("SLUICE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice"),
    }
}

/// The installed `name`: from `$SLUICE_CACHE/bin`, the test venv
/// (`$SLUICE_VENV/bin`) or `PATH`. Panics, saying how to install it, when
/// it is nowhere: these tests check with the real tools or fail.
pub fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("SLUICE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv"));
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    [cache_dir().join("bin"), venv.join("bin")]
        .into_iter()
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run tests/scripts/setup.sh (it installs helm, promtool, \
                 lua5.4 and kubernetes-validate under $SLUICE_CACHE, default ~/.cache/sluice)"
            )
        })
}

/// Runs `command`, feeding it `stdin`; its stdout, or a panic with its
/// output when it fails.
pub fn run(command: &mut Command, stdin: Option<&str>) -> String {
    use std::io::Write;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {shown}: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
