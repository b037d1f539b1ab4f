//! `tlauth` as a user runs it: a real process, its stdout, stderr and exit code.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub(crate) mod connect;

/// Runs `tlauth args` with only `env` of tlauth's own settings (none inherited from the
/// shell running the tests), feeding it `stdin`.
pub(crate) fn tlauth(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = command(args);
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

/// `tlauth args`, with none of tlauth's own settings inherited from the shell running the
/// tests.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlauth"));
    cmd.args(args);
    for name in [
        "TRUELAYER_ENV",
        "TRUELAYER_CLIENT_ID",
        "TRUELAYER_CLIENT_SECRET",
        "TRUELAYER_SECRET_ID",
        "TRUELAYER_SIGNING_KEY_FILE",
        "TRUELAYER_SIGNING_KEY_ID",
        "TRUELAYER_SIGNING_KMS_KEY_ID",
        "TRUELAYER_CONNECTIONS_KEY",
        "TLAUTH_STORE",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// Output bytes as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tlauth emulator --port 0 ARGS` running, with the settings it printed on standard output
/// (`NAME=value` lines) and its standard error to read; killed when dropped.
pub(crate) struct SpawnedEmulator {
    pub(crate) child: std::process::Child,
    pub(crate) settings: Vec<(String, String)>,
    /// `None` once [`drain_stderr`](Self::drain_stderr) handed it to a thread.
    stderr: Option<std::io::Lines<std::io::BufReader<std::process::ChildStderr>>>,
}

/// How many `NAME=value` lines `tlauth emulator` prints.
const EMULATOR_SETTINGS: usize = 5;

impl SpawnedEmulator {
    pub(crate) fn start(args: &[&str]) -> SpawnedEmulator {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tlauth"))
            .args(["emulator", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let settings = (0..EMULATOR_SETTINGS)
            .map(|_| {
                let line = stdout.next().expect("the emulator's settings").unwrap();
                let (name, value) = line.split_once('=').unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let stderr = Some(std::io::BufReader::new(child.stderr.take().unwrap()).lines());
        SpawnedEmulator {
            child,
            settings,
            stderr,
        }
    }

    /// The next line on standard error (`None` at its end, or once drained).
    pub(crate) fn stderr_line(&mut self) -> Option<String> {
        self.stderr.as_mut()?.next().map(Result::unwrap)
    }

    /// Reads the rest of standard error on a thread of its own, so the emulator never
    /// blocks on a full pipe.
    pub(crate) fn drain_stderr(&mut self) {
        if let Some(rest) = self.stderr.take() {
            std::thread::spawn(move || for _ in rest {});
        }
    }

    /// The value of the setting `name`.
    pub(crate) fn var(&self, name: &str) -> &str {
        &self.settings.iter().find(|(n, _)| n == name).unwrap().1
    }
}

impl Drop for SpawnedEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
