//! `tlauth connect` running, as the connect and browser tests drive it: the auth link it
//! prints, its standard error as it comes, its id at the end.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use truelayer_auth_emulator::Emulator;

/// `TRUELAYER_ENV`, `TRUELAYER_CLIENT_ID` and `TRUELAYER_CLIENT_SECRET` of `emulator`.
pub(crate) fn emulator_env(emulator: &Emulator) -> Vec<(String, String)> {
    vec![
        ("TRUELAYER_ENV".into(), emulator.url()),
        ("TRUELAYER_CLIENT_ID".into(), emulator.client_id().into()),
        (
            "TRUELAYER_CLIENT_SECRET".into(),
            emulator.client_secret().into(),
        ),
    ]
}

/// A directory for a store, and the store's path in it.
pub(crate) struct StoreDir {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl StoreDir {
    pub(crate) fn new() -> StoreDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("connections.db");
        StoreDir { dir, path }
    }

    pub(crate) fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".key");
        PathBuf::from(name)
    }
}

/// A finished `tlauth` run.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// `tlauth connect ARGS` running.
pub(crate) struct RunningConnect {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl RunningConnect {
    pub(crate) fn start(args: &[&str], env: &[(String, String)]) -> RunningConnect {
        Self::start_command(&["connect"], args, env)
    }

    /// `tlauth COMMAND ARGS` running (`connections extend ...`, which listens too).
    pub(crate) fn start_command(
        command: &[&str],
        args: &[&str],
        env: &[(String, String)],
    ) -> RunningConnect {
        let mut cmd = super::command(command);
        cmd.args(args)
            .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let all = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        RunningConnect {
            child,
            lines,
            stderr,
        }
    }

    /// The auth link it printed (the line of standard error that is a URL).
    pub(crate) fn link(&self) -> url::Url {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "tlauth connect printed no link: {}",
                        self.stderr.lock().unwrap()
                    )
                });
            if line.starts_with("http") {
                return url::Url::parse(&line).unwrap();
            }
        }
    }

    /// Standard error so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to a minute) for it to end.
    pub(crate) fn finish(mut self) -> Finished {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tlauth connect did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread has seen the pipe close.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for RunningConnect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tlauth ARGS` with `env`, to its end.
pub(crate) fn run(args: &[&str], env: &[(String, String)]) -> Finished {
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let out = super::tlauth(args, &env, None);
    Finished {
        status: out.status,
        stdout: super::text(&out.stdout),
        stderr: super::text(&out.stderr),
    }
}

/// The file's permission bits.
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}
