//! The files of a test PostgreSQL server: the user its binaries run as
//! (`postgres` when the tests run as root) and the commands for them, the
//! temp dirs that user owns (each marked with the test process that made
//! it, and swept once that process is gone), and the data dir made by
//! `initdb` once and cached, which every server starts from a copy of.

use super::SUPERUSER;
use crate::process::{cache_dir, lock_file, random_token};
use anyhow::{bail, Context};
use nix::sys::signal::kill;
use nix::unistd::{Pid, User};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bumped whenever the template's initdb flags or settings change.
const TEMPLATE_VERSION: &str = "pg15-template-v2";

/// Settings of every server (the port and socket dir are added per server).
const SETTINGS: &str = "
# riskfeat test harness
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '64MB'
hot_standby = on
hot_standby_feedback = on
shared_buffers = '32MB'
max_connections = 200
fsync = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %u@%d '
";

/// Where the PostgreSQL server binaries are: `$RISKFEAT_PG_BIN`, else
/// `/usr/lib/postgresql/15/bin`.
pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("RISKFEAT_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join(name)
}

/// The uid/gid the server runs as: `postgres` when we are root, else
/// ourselves (`None`).
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .context("looking up user postgres")?
        .context("running as root, but there is no `postgres` user to run PostgreSQL as")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// A command for a PostgreSQL binary, run as the server user.
pub(super) fn pg_command(bin: &str, cwd: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(pg_bin(bin));
    cmd.current_dir(cwd).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = server_user()? {
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

/// Runs a short-lived PostgreSQL tool to completion; fails with its output.
pub(super) fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Hands `path` to the server user (when we are root).
pub(super) fn give_to_server(path: &Path) -> anyhow::Result<()> {
    if let Some((uid, gid)) = server_user()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
    }
    Ok(())
}

/// Marks a server temp dir with the test process that owns it.
const OWNER_FILE: &str = "riskfeat-owner";

/// A temp dir the server user owns, mode 0700, marked with our pid (see
/// [`sweep_stale_dirs`]).
pub(super) fn server_temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_stale_dirs);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temp dir")?;
    fs::write(
        dir.path().join(OWNER_FILE),
        process_identity(std::process::id()).unwrap_or_default(),
    )?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
    give_to_server(dir.path())?;
    Ok(dir)
}

/// `"<pid> <start time>"` of a live process, from `/proc/<pid>/stat`.
fn process_identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat[stat.rfind(')')? + 2..].split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Removes server dirs of test processes that died without dropping them
/// (SIGKILL, Ctrl-C: their servers got SIGQUIT, their dirs stayed). A dir
/// goes only when its owner process is gone and no postmaster runs in it.
/// Runs once per process, before the first server dir is made.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("riskfeat-pg-") {
            continue;
        }
        let Ok(owner) = fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let owner_pid = owner.split(' ').next().and_then(|p| p.parse::<u32>().ok());
        let owner_alive =
            owner_pid.is_some_and(|pid| process_identity(pid).as_deref() == Some(owner.trim()));
        let postmaster_alive = fs::read_to_string(path.join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok());
        if !owner_alive && !postmaster_alive {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// The cached initdb'ed data dir and its superuser password; made once.
pub(super) fn template() -> anyhow::Result<(PathBuf, String)> {
    let cache = cache_dir();
    let _lock = lock_file(&cache.join(format!("{TEMPLATE_VERSION}.lock")))?;
    let dir = cache.join(TEMPLATE_VERSION);
    let data = dir.join("data");
    let pw_file = dir.join("superuser_password");
    if dir.join("complete").exists() {
        let pw = fs::read_to_string(&pw_file)
            .with_context(|| format!("reading {}", pw_file.display()))?;
        return Ok((data, pw.trim().to_string()));
    }
    let work = server_temp_dir("riskfeat-initdb-")?;
    let password = random_token(24);
    let work_pw = work.path().join("pwfile");
    fs::write(&work_pw, format!("{password}\n"))?;
    give_to_server(&work_pw)?;
    let work_data = work.path().join("data");
    let mut cmd = pg_command("initdb", work.path())?;
    cmd.arg("-D")
        .arg(&work_data)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .arg(format!("--pwfile={}", work_pw.display()));
    run(cmd, "initdb")?;
    let mut conf = File::options()
        .append(true)
        .open(work_data.join("postgresql.conf"))?;
    conf.write_all(SETTINGS.as_bytes())?;
    drop(conf);

    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    copy_dir(&work_data, &data)?;
    fs::write(&pw_file, &password)?;
    fs::set_permissions(&pw_file, fs::Permissions::from_mode(0o600))?;
    File::create(dir.join("complete"))?;
    Ok((data, password))
}

/// `cp -a`: keeps owners and modes (the data dir must stay 0700 and the
/// server user's).
pub(super) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(from).arg(to);
    run(cmd, &format!("cp -a {} {}", from.display(), to.display()))
}
