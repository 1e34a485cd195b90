//! A running `rialto` binary inside a namespace, stopped by the test.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::netns_command;

/// A running `rialto run`; killed on drop if the test did not stop it.
#[derive(Debug)]
pub struct Rialto {
    child: Child,
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
        let (tx, stderr) = mpsc::channel();
        let pipe = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        loop {
            match stderr.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("rialto ready") => break,
                Ok(line) => log.push(line),
                Err(_) => panic!("rialto did not become ready:\n{}", log.join("\n")),
            }
        }
        Self {
            child,
            stderr: Mutex::new(stderr),
        }
    }

    /// Waits for a log line containing `needle` and returns it; panics
    /// with the lines seen meanwhile if none comes within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.lock().unwrap().recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "rialto never logged {needle:?}; it logged:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Stops rialto with SIGTERM; returns its exit status and parsed summary.
    pub fn terminate(mut self) -> (ExitStatus, serde_json::Value) {
        self.signal(Signal::SIGTERM);
        let mut stdout = Vec::new();
        let mut pipe = self.child.stdout.take().expect("stdout is piped");
        pipe.read_to_end(&mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        let log: Vec<_> = self.stderr.lock().unwrap().try_iter().collect();
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
