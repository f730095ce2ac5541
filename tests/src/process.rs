//! Child processes of the tests: the binaries under test ([`binary`],
//! [`ChildProc`]), polling ([`wait_until`]), and the small process and file
//! helpers the other harness modules share (free ports, the cache dir, file
//! locks, private files, random tokens).

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Where the harness keeps what survives a test run (the OpenBao install,
/// the PostgreSQL template): `$RISKFEAT_CACHE_DIR`, else
/// `~/.cache/riskfeat`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RISKFEAT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("riskfeat")
}

/// Writes `text` to `path` as a new 0600 file (DSNs, tokens: secrets).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// An exclusive `flock` on `path` (created if missing), held until dropped.
/// Serializes one-time set-up (installs, templates) between test processes.
pub fn lock_file(path: &Path) -> anyhow::Result<Flock<File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// A loopback port that was free a moment ago. Callers retry on a bind
/// failure (another process may take it in between). The one every test,
/// fixture and xtask command uses.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A random alphanumeric string (passwords, tokens): no quoting needed in
/// SQL literals, URLs or command lines.
pub(crate) fn random_token(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A spawn request for the spawner thread.
type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it gets `on_parent_death` when this test process
/// ends for any reason (also SIGKILL, or Ctrl-C of `cargo test`, which
/// skip every `Drop`): `PR_SET_PDEATHSIG`, set after the uid change. The
/// kernel sends it when the spawning *thread* exits, so every spawn goes
/// through one thread that lives as long as the process.
pub(crate) fn spawn_tied(mut cmd: Command, on_parent_death: Signal) -> std::io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> =
        std::sync::OnceLock::new();
    let parent = std::process::id() as i32;
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(on_parent_death)?;
            // The parent may have died before the prctl.
            if nix::unistd::getppid().as_raw() != parent {
                let _ = nix::sys::signal::raise(on_parent_death);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("riskfeat-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Polls `f` every 50 ms until it returns true; fails after `timeout`,
/// naming `what` it waited for.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `target/debug/<name>` (the target dir of the running test executable).
/// Builds it with `cargo build --bin <name>` once per process, unless
/// `RISKFEAT_NO_BUILD=1` (`cargo xtask test` builds everything first).
/// Panics when the build fails: no test can run without its binary.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let dir = target_profile_dir();
    let path = dir.join(name);
    if std::env::var("RISKFEAT_NO_BUILD").as_deref() == Ok("1") {
        return path;
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bin", name])
            .current_dir(workspace_root())
            .status()
            .unwrap_or_else(|e| panic!("running cargo build --bin {name}: {e}"));
        assert!(
            status.success(),
            "cargo build --bin {name} failed: {status}"
        );
        built.insert(name.to_string());
    }
    path
}

/// `target/artifacts/<name>/` (created): what a test leaves for people to
/// look at, e.g. the console's screenshots.
pub fn artifacts_dir(name: &str) -> anyhow::Result<PathBuf> {
    let mut dir = target_profile_dir();
    dir.pop();
    let dir = dir.join("artifacts").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `target/<profile>`: the test executable lives in `target/<profile>/deps`.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// A child process for a test: its stdout and stderr go to one log file
/// ([`ChildProc::logs`]); it runs in its own process group (a terminal's
/// Ctrl-C does not reach it); dropping it kills (SIGKILL) and reaps it, and
/// it gets SIGKILL if the test process dies without dropping it.
pub struct ChildProc {
    child: Child,
    exited: Option<ExitStatus>,
    log_path: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl ChildProc {
    /// Starts `bin` with `args`, the current environment plus `env`.
    pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ChildProc> {
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(env.iter().copied());
        Self::spawn_command(cmd)
    }

    /// Starts a prepared command (args, env, uid...) the same way.
    pub fn spawn_command(mut cmd: Command) -> anyhow::Result<ChildProc> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix("riskfeat-proc-")
            .tempdir()
            .context("creating a temp dir for the process log")?;
        let log_path = dir.path().join(format!("{name}.log"));
        let out =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = spawn_tied(cmd, Signal::SIGKILL).with_context(|| format!("starting {name}"))?;
        Ok(ChildProc {
            child,
            exited: None,
            log_path,
            name,
            _dir: dir,
        })
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log file (removed when the `ChildProc` is dropped).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process (not to a reaped one: its pid may be
    /// someone else's by now).
    pub fn signal(&self, sig: Signal) {
        if self.exited.is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// Whether the process exited; reaps it if so.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit (`None`: still
    /// running; dropping it then kills it).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// The program name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.child.wait();
            // Anything it forked into its group.
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}
