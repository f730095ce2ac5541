//! The one way every riskfeat binary learns it should stop: SIGTERM (the
//! kubelet) or SIGINT (a terminal), whichever comes first.

use tokio::signal::unix::{signal, SignalKind};

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Term,
    Int,
}

impl Shutdown {
    /// `SIGTERM` or `SIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            Shutdown::Term => "SIGTERM",
            Shutdown::Int => "SIGINT",
        }
    }
}

impl std::fmt::Display for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Waits for SIGTERM or SIGINT and says which arrived. The handlers are
/// installed when the future is first polled.
///
/// # Panics
/// Outside a Tokio runtime with its I/O driver enabled (a programming
/// error: every binary builds its runtime with `enable_all`).
pub async fn shutdown_signal() -> Shutdown {
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => Shutdown::Term,
        _ = int.recv() => Shutdown::Int,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_the_signal_that_arrived() {
        let wait = tokio::spawn(shutdown_signal());
        // Let the task install its handlers before the signal is sent.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Shutdown::Int);
        assert_eq!(got.to_string(), "SIGINT");
    }
}
