//! `tlauth` as a user runs it: a real process, its stdout, stderr and exit code.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `tlauth args` with only `env` of tlauth's own settings (none inherited from the
/// shell running the tests), feeding it `stdin`.
pub(crate) fn tlauth(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlauth"));
    cmd.args(args);
    for name in [
        "TRUELAYER_ENV",
        "TRUELAYER_CLIENT_ID",
        "TRUELAYER_CLIENT_SECRET",
        "TRUELAYER_SECRET_ID",
        "TRUELAYER_SIGNING_KEY_FILE",
        "TRUELAYER_SIGNING_KEY_ID",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Output bytes as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
