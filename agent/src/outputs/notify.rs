//! Telling a program that is not riskfeat-worker to reload: read its pid
//! from `notify_pid_file` and send it `notify_signal`. Every failure is a
//! message naming the file and what to fix; the caller warns and goes on
//! (the outputs are written either way; a reader that polls still sees
//! them).

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;

/// Sends `signal` to the pid in `pid_file`; returns the pid.
pub fn send(pid_file: &Path, signal: Signal) -> Result<i32, String> {
    let shown = pid_file.display();
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("notify_pid_file {shown}: cannot read: {e}"))?;
    let trimmed = text.trim();
    let pid: i32 = trimmed.parse().map_err(|_| {
        let mut head: String = trimmed.chars().take(32).collect();
        if trimmed.chars().count() > 32 {
            head.push_str("...");
        }
        format!("notify_pid_file {shown}: {head:?} is not a process id")
    })?;
    if pid <= 1 || pid as u32 == std::process::id() {
        return Err(format!(
            "notify_pid_file {shown}: refusing to signal pid {pid} (0, 1, negative pids and the agent's own are never signalled)"
        ));
    }
    kill(Pid::from_raw(pid), signal).map_err(|e| match e {
        Errno::ESRCH => format!("notify_pid_file {shown}: no process {pid} (a stale pid file?)"),
        Errno::EPERM => format!(
            "notify_pid_file {shown}: not permitted to signal pid {pid} (run as the same user, and share the pod's process namespace)"
        ),
        e => format!("notify_pid_file {shown}: cannot signal pid {pid}: {e}"),
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pid_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.pid");
        let err = send(&f, Signal::SIGHUP).unwrap_err();
        assert!(err.contains("app.pid: cannot read"), "{err}");
        for (text, want) in [
            ("not a pid\n", "\"not a pid\" is not a process id"),
            ("1\n", "refusing to signal pid 1"),
            ("-5", "refusing to signal pid -5"),
            (
                &std::process::id().to_string(),
                "the agent's own are never signalled",
            ),
            ("2147483600", "no process 2147483600"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = send(&f, Signal::SIGHUP).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn signals_the_process_in_the_pid_file() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.pid");
        std::fs::write(&f, format!("{}\n", child.id())).unwrap();
        assert_eq!(send(&f, Signal::SIGTERM).unwrap(), child.id() as i32);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }
}
