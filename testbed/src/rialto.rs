//! A running `rialto` binary inside a namespace, stopped by the test.

use std::{
    process::{Child, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::netns_command;

/// Where the Rialto in namespace `ns` keeps its flow tables (as
/// `testbed/lib.sh` says): removed with the namespace.
pub fn state_dir(ns: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/dev/shm/rialto-testbed/{ns}"))
}

/// How long `rialto run` may take to start (load, attach, bind, learn the
/// next hop).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped `rialto run` may take to drain, detach and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `rialto run`; killed on drop if the test did not stop it.
#[derive(Debug)]
pub struct Rialto {
    child: Option<Child>,
    /// What Rialto logged before it was ready, not yet waited for.
    early: Mutex<Vec<String>>,
    /// Rialto's log lines (behind a mutex so a test's threads can share it).
    stderr: Mutex<mpsc::Receiver<String>>,
}

impl Rialto {
    /// Starts `bin run ARGS` in namespace `ns` and waits until it is ready.
    pub fn start(bin: &str, ns: &str, args: &[&str]) -> Self {
        let mut cmd = netns_command(ns, bin);
        cmd.arg("run").args(args);
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(state_dir(ns));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rialto starts");
        let stderr = crate::lines_of(child.stderr.take().unwrap());
        let mut early = Vec::new();
        if crate::line_within(&stderr, "rialto ready", READY_TIMEOUT, &mut early).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rialto did not become ready within {READY_TIMEOUT:?}:\n{}",
                early.join("\n")
            );
        }
        Self {
            child: Some(child),
            early: Mutex::new(early),
            stderr: Mutex::new(stderr),
        }
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("running");
        Pid::from_raw(child.id() as i32)
    }

    /// Waits for a log line containing `needle` and returns it; panics
    /// with the lines seen meanwhile if none comes within `timeout`.
    /// What it logged before it was ready counts too.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = early.iter().position(|l| l.contains(needle)) {
            return early.drain(..=i).next_back().expect("the line found");
        }
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::mem::take(&mut *early);
        crate::line_within(&lines, needle, timeout, &mut seen).unwrap_or_else(|| {
            panic!(
                "rialto never logged {needle:?}; it logged:\n{}",
                seen.join("\n")
            )
        })
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Stops rialto with SIGTERM; returns its exit status and parsed summary.
    /// Panics, with what it logged, if it is not gone within 20 s.
    pub fn terminate(self) -> (ExitStatus, serde_json::Value) {
        self.signal(Signal::SIGTERM);
        self.exit("sent SIGTERM")
    }

    /// Waits for rialto to exit on its own (it was taken over from, say);
    /// its exit status and parsed summary. Panics, with what it logged, if
    /// it is not gone within 20 s.
    pub fn wait_exit(self) -> (ExitStatus, serde_json::Value) {
        self.exit("left to exit")
    }

    fn exit(mut self, how: &str) -> (ExitStatus, serde_json::Value) {
        let child = self.child.take().expect("running");
        let waited = crate::wait_within(child, STOP_TIMEOUT);
        let log: Vec<_> = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_iter()
            .collect();
        let out = match waited {
            Ok(out) => out,
            Err((what, _)) => panic!("rialto, {how}, {what}; it logged:\n{}", log.join("\n")),
        };
        let (status, stdout) = (out.status, out.stdout);
        let summary = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
            panic!(
                "summary is not JSON ({e}): {}\nlog:\n{}",
                String::from_utf8_lossy(&stdout),
                log.join("\n")
            )
        });
        (status, summary)
    }
}

impl Rialto {
    /// Kills rialto with SIGKILL, as a crash would end it, and reaps it.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("rialto can be killed");
            child.wait().expect("rialto can be reaped");
        }
    }
}

impl Drop for Rialto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sum over the workers of an exit summary (or `/api/v1/status`) of the
/// number `field` picks out of each; panics if one has no such number.
pub fn workers_total(
    summary: &serde_json::Value,
    field: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> u64 {
    summary["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {summary}"))
        .iter()
        .map(|w| {
            field(w)
                .as_u64()
                .unwrap_or_else(|| panic!("no number in {w}"))
        })
        .sum()
}
