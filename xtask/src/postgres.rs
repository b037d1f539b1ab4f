//! A PostgreSQL server for the tests of the PostgreSQL connection store.
//!
//! `cargo xtask ci` passes `DATABASE_URL` to the test step: the caller's own server when
//! `DATABASE_URL` is already set, otherwise a throw-away cluster started here:
//!
//! - Debian's `postgresql` package is installed if no `/usr/lib/postgresql/<ver>/bin/initdb`
//!   is there (the highest version found is used);
//! - a fresh cluster is made in `target/postgres/data` (as root, when the unprivileged owner
//!   below cannot reach `target/`, as under a 0700 `/root`: in a directory of this checkout's
//!   own under the system's temporary directory) by `initdb` (superuser `postgres`,
//!   `trust` authentication: it listens on 127.0.0.1 only, on a free port, with no Unix
//!   socket), and `postgres` runs as a child of xtask;
//! - PostgreSQL refuses to run as root, so as root initdb and the server run as the system
//!   user `tlauth-pg` (created with `useradd -r` if missing; `nobody` if that fails), which
//!   owns `target/postgres`;
//! - it is stopped (SIGINT: PostgreSQL's fast shutdown, then SIGKILL) when the value is
//!   dropped, so also when the tests fail; a server left over by a killed xtask is stopped
//!   at the next start.
//!
//! `cargo xtask postgres` runs the same cluster in the foreground for a developer's own
//! `cargo test`, printing `DATABASE_URL=...`; Ctrl-C stops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, root, run};

/// Where the cluster lives: `target/postgres`, unless xtask runs as root and the
/// unprivileged owner could not reach it (a checkout under `/root`, which is 0700), in which
/// case a directory of this checkout's own under the system's temporary directory.
fn cluster_dir(as_other_user: bool) -> PathBuf {
    let in_target = root().join("target").join("postgres");
    if !as_other_user || others_can_traverse(&root().join("target")) {
        return in_target;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    root().hash(&mut hasher);
    std::env::temp_dir().join(format!("tlauth-postgres-{:016x}", hasher.finish()))
}

/// Whether every directory from `/` down to `dir` lets others search it (`o+x`).
fn others_can_traverse(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The system user the cluster runs as when xtask runs as root.
const USER: &str = "tlauth-pg";

/// A PostgreSQL server for the tests: ours (stopped when dropped) or the caller's.
pub(crate) struct Postgres {
    /// `postgres://...` for the tests, as `DATABASE_URL`.
    pub(crate) url: String,
    /// The server we started, if we did.
    child: Option<Child>,
}

impl Postgres {
    /// The caller's server when `DATABASE_URL` is set, else a cluster of our own.
    pub(crate) fn for_tests() -> Result<Self, String> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                eprintln!("PostgreSQL: using DATABASE_URL from the environment");
                Ok(Postgres { url, child: None })
            }
            _ => Self::start(),
        }
    }

    /// Installs PostgreSQL if needed and starts a fresh cluster in `target/postgres`.
    pub(crate) fn start() -> Result<Self, String> {
        let bin = ensure_postgresql()?;
        let owner = unprivileged_owner()?;
        let dir = cluster_dir(owner.is_some());
        let data = dir.join("data");

        // A server left running by an xtask that was killed: stop it before wiping its data.
        if data.join("postmaster.pid").exists() {
            let mut stop = as_owner(&owner, &bin.join("pg_ctl"));
            stop.arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = &owner {
            let mut chown = Command::new("chown");
            chown.arg(format!("{uid}:{gid}")).arg(&dir);
            run("chown target/postgres", chown)?;
        }

        let mut initdb = as_owner(&owner, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(&dir)
            .stdout(Stdio::null());
        run("initdb target/postgres/data", initdb)?;

        let port = free_port()?;
        let log_path = dir.join("postgres.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let child = as_owner(&owner, &bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let mut postgres = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            child: Some(child),
        };
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = postgres.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                postgres.child = None;
                return Err(format!("postgres exited ({status}):\n{log}"));
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "postgres did not accept connections on port {port} within 30 s (log: {})",
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "PostgreSQL (pid {}, {}) answers at {}",
            postgres.child.as_ref().map_or(0, Child::id),
            bin.display(),
            postgres.url
        );
        Ok(postgres)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown: it ends the sessions and stops at once.
        // The shell's own `kill`: procps (/bin/kill) is not on every minimal image.
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", child.id())])
            .status();
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `cargo xtask postgres`: a cluster in the foreground until Ctrl-C.
pub(crate) fn foreground() -> Result<(), String> {
    let mut postgres = Postgres::start()?;
    println!("DATABASE_URL={}", postgres.url);
    if let Some(child) = postgres.child.as_mut() {
        // Ctrl-C reaches the server too (same process group): it shuts down and we return.
        child.wait().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The bin directory of the highest installed PostgreSQL major version, installing Debian's
/// `postgresql` package first if there is none.
fn ensure_postgresql() -> Result<PathBuf, String> {
    if let Some(bin) = installed_bin() {
        return Ok(bin);
    }
    let mut update = Command::new("apt-get");
    update.arg("update");
    run("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "postgresql"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get install postgresql", install)?;
    installed_bin().ok_or_else(|| {
        "apt-get installed postgresql but no /usr/lib/postgresql/<version>/bin/initdb is there"
            .to_owned()
    })
}

fn installed_bin() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// As root: the uid and gid to run PostgreSQL as (`tlauth-pg`, created if missing, else
/// `nobody`). Not root: `None`, run as ourselves.
fn unprivileged_owner() -> Result<Option<(String, String)>, String> {
    if id(&["-u"]).as_deref() != Some("0") {
        return Ok(None);
    }
    if id(&["-u", USER]).is_none() {
        let mut useradd = Command::new("useradd");
        useradd.args([
            "-r",
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            USER,
        ]);
        if let Err(e) = run(&format!("useradd -r {USER}"), useradd) {
            eprintln!("{e}; running PostgreSQL as nobody instead");
        }
    }
    for user in [USER, "nobody"] {
        if let (Some(uid), Some(gid)) = (id(&["-u", user]), id(&["-g", user])) {
            return Ok(Some((uid, gid)));
        }
    }
    Err(format!(
        "running as root, and neither {USER} nor nobody exists to run PostgreSQL as"
    ))
}

/// `id <args>`'s answer, if it succeeded.
fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `program`, run as `owner` (with `setpriv`, which execs it: the child's pid is the
/// program's own) or as ourselves.
fn as_owner(owner: &Option<(String, String)>, program: &Path) -> Command {
    match owner {
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}
