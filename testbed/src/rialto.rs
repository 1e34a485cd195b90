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

/// How long `rialto run` may take to start (load, attach, bind, learn the
/// next hop).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped `rialto run` may take to drain, detach and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `rialto run`; killed on drop if the test did not stop it.
#[derive(Debug)]
pub struct Rialto {
    child: Option<Child>,
    /// Rialto's log lines (behind a mutex so a test's threads can share it).
    stderr: Mutex<mpsc::Receiver<String>>,
}

impl Rialto {
    /// Starts `bin run ARGS` in namespace `ns` and waits until it is ready.
    pub fn start(bin: &str, ns: &str, args: &[&str]) -> Self {
        let mut child = netns_command(ns, bin)
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rialto starts");
        let stderr = crate::lines_of(child.stderr.take().unwrap());
        if let Err(log) = crate::line_within(&stderr, "rialto ready", READY_TIMEOUT) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rialto did not become ready within {READY_TIMEOUT:?}:\n{}",
                log.join("\n")
            );
        }
        Self {
            child: Some(child),
            stderr: Mutex::new(stderr),
        }
    }

    fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("running");
        Pid::from_raw(child.id() as i32)
    }

    /// Waits for a log line containing `needle` and returns it; panics
    /// with the lines seen meanwhile if none comes within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        crate::line_within(&lines, needle, timeout).unwrap_or_else(|seen| {
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
    pub fn terminate(mut self) -> (ExitStatus, serde_json::Value) {
        self.signal(Signal::SIGTERM);
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
            Err((what, _)) => panic!(
                "rialto, sent SIGTERM, {what}; it logged:\n{}",
                log.join("\n")
            ),
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
