//! A planned upgrade: `rialto run --take-over` takes over from the Rialto
//! that serves the interface, which then exits.
//!
//! The running Rialto listens on `control.sock` in its state directory.
//! The new one connects and says hello: its handover protocol and a state
//! version it reads. If the running one cannot hand over to it (another
//! protocol, not the state version it writes), it says why and goes on
//! serving untouched; the new one says hello again with each older version
//! it reads, and exits with the first reason if all are refused. Otherwise the new one gets ready (its
//! config compiled and checked, its XDP program loaded, the next hop
//! resolved) and asks for the release: the running one stops its workers,
//! drains what it was transmitting, detaches its XDP program, closes its
//! sockets and unlocks the state directory, says how many flows it leaves,
//! and exits. The new one then locks the directory, resumes the flows from
//! it (as after any restart), attaches, binds and serves. Between the
//! release and the new workers serving, traffic goes to the kernel.
//!
//! One JSON message per line, each way.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The handover's own protocol; a peer of another is refused.
pub const PROTOCOL: u32 = 1;

/// How long the new Rialto waits for the old one to answer or let go.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old Rialto waits for a hello or a release.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// New -> old: who is asking.
    Hello {
        protocol: u32,
        state_version: u32,
        pid: u32,
        version: String,
    },
    /// Old -> new: ready to hand over.
    Welcome { pid: u32 },
    /// Old -> new: it will not hand over, and why; it serves on.
    Refused { why: String },
    /// New -> old: let go now.
    Release,
    /// Old -> new: let go; the flows it leaves in the state directory, and
    /// whether its sockets were bound zero-copy.
    Released { flows: u64, zero_copy: bool },
}

/// Starts the binary this process was started from (an upgrade installs
/// the new one over it) with this process's arguments and `--take-over`;
/// the new Rialto then takes over as any `--take-over` does. If it fails
/// (refused, say), its exit is logged and this one serves on.
pub fn upgrade() -> Result<()> {
    let exe = EXE
        .get()
        .context("the binary's path was not noted at start")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if !args.iter().any(|a| a == "--take-over") {
        args.push("--take-over".into());
    }
    let mut child = Command::new(exe)
        .args(&args)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    info!(pid = child.id(), exe = %exe.display(), "upgrade: a new rialto takes over");
    std::thread::Builder::new()
        .name("rialto-upgrade".into())
        .spawn(move || match child.wait() {
            Ok(status) => warn!("the upgrade did not take over ({status}): serving on"),
            Err(e) => warn!("the upgrade's process: {e}"),
        })
        .context("cannot start the upgrade's waiter")?;
    Ok(())
}

/// Where this process's binary was when it started: the path an upgrade
/// starts, whatever is installed there by then.
static EXE: OnceLock<PathBuf> = OnceLock::new();

/// Notes where this process's binary is, for [`upgrade`].
pub fn note_exe() {
    if let Ok(exe) = std::env::current_exe() {
        let _ = EXE.set(exe);
    }
}

/// The state directory's control socket.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// A release the old Rialto was asked for: once it has let go, it says so
/// with [`Release::done`].
#[derive(Debug)]
pub struct Release {
    stream: UnixStream,
    /// The new Rialto's process.
    pub successor: u32,
}

impl Release {
    /// Tells the new Rialto that everything is let go, with how many flows
    /// left in the state directory, and whether the sockets were bound
    /// zero-copy (if not, the new one does not try).
    pub fn done(mut self, flows: u64, zero_copy: bool) {
        if let Err(e) = send(&mut self.stream, &Message::Released { flows, zero_copy }) {
            warn!("the new rialto did not hear that this one let go: {e}");
        }
    }
}

/// Listens for a new Rialto on `state_dir`'s control socket (this process
/// holds the directory's lock): a release asked for is sent to `releases`.
/// `state_version` is what this Rialto's state directory holds.
pub fn listen(state_dir: &Path, state_version: u32, releases: mpsc::Sender<Release>) -> Result<()> {
    let path = socket_path(state_dir);
    // A socket left by a Rialto that died; the lock says it is gone.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::thread::Builder::new()
        .name("rialto-takeover".into())
        .spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                match answer(stream, state_version) {
                    Ok(Some(release)) => {
                        // Only one release: the listener is done.
                        let _ = releases.send(release);
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => warn!("a take-over did not go through: {e:#}"),
                }
            }
        })
        .context("cannot start the take-over listener")?;
    Ok(())
}

/// One new Rialto's requests: its hello answered, then its release.
fn answer(stream: UnixStream, state_version: u32) -> Result<Option<Release>> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    let Message::Hello {
        protocol,
        state_version: theirs,
        pid,
        version,
    } = receive(&mut reader)?
    else {
        bail!("a take-over began with something else than a hello");
    };
    if protocol != PROTOCOL || theirs != state_version {
        let why = format!(
            "this rialto (pid {}) hands over with protocol {PROTOCOL} and state version \
             {state_version}; rialto {version} (pid {pid}) asked with protocol {protocol} and \
             state version {theirs}",
            std::process::id()
        );
        warn!("take-over refused, serving on: {why}");
        send(&mut stream, &Message::Refused { why })?;
        return Ok(None);
    }
    info!(pid, version, "a new rialto asks to take over");
    send(
        &mut stream,
        &Message::Welcome {
            pid: std::process::id(),
        },
    )?;
    match receive(&mut reader) {
        Ok(Message::Release) => Ok(Some(Release {
            stream,
            successor: pid,
        })),
        Ok(other) => bail!("expected a release, got {other:?}"),
        Err(e) => {
            info!("the new rialto went away before the release, serving on: {e:#}");
            Ok(None)
        }
    }
}

/// The new Rialto's side: a running Rialto that agreed to hand over.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    pub pid: u32,
}

impl Predecessor {
    /// Says hello to the Rialto serving with `state_dir`, with each state
    /// version this one reads (`state_versions`, newest first) until it
    /// agrees: a Rialto hands over only to one that reads what it writes,
    /// and says so by the version alone (an older one writes an older
    /// version). Fails, with its first reason, if there is none or it
    /// refuses them all.
    pub fn greet(state_dir: &Path, state_versions: &[u32], protocol: u32) -> Result<Self> {
        let mut first = None;
        for &state_version in state_versions {
            match Self::hello(state_dir, state_version, protocol)? {
                Ok(predecessor) => return Ok(predecessor),
                Err(why) => {
                    first.get_or_insert(why);
                }
            }
        }
        bail!("take-over refused: {}", first.unwrap_or_default())
    }

    /// One hello: welcomed, or refused and why.
    fn hello(state_dir: &Path, state_version: u32, protocol: u32) -> Result<Result<Self, String>> {
        let path = socket_path(state_dir);
        let mut stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "nothing to take over: no rialto listens at {} (is one running with this \
                 --iface and --state-dir?)",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        send(
            &mut stream,
            &Message::Hello {
                protocol,
                state_version,
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        )?;
        match receive(&mut reader)? {
            Message::Welcome { pid } => Ok(Ok(Self {
                stream,
                reader,
                pid,
            })),
            Message::Refused { why } => Ok(Err(why)),
            other => bail!("take-over: unexpected answer {other:?}"),
        }
    }

    /// Asks it to let go; returns once it has.
    pub fn release(mut self) -> Result<Released> {
        let asked = Instant::now();
        send(&mut self.stream, &Message::Release)?;
        match receive(&mut self.reader).context("the running rialto did not let go")? {
            Message::Released { flows, zero_copy } => Ok(Released {
                pid: self.pid,
                asked,
                flows,
                zero_copy,
            }),
            other => bail!("take-over: unexpected answer {other:?}"),
        }
    }
}

/// What the Rialto taken over from said when it let go.
#[derive(Clone, Copy, Debug)]
pub struct Released {
    pub pid: u32,
    /// When the release was asked for: traffic has gone to the kernel
    /// since about then.
    pub asked: Instant,
    /// Flows it left in the state directory.
    pub flows: u64,
    /// Whether its sockets were bound zero-copy.
    pub zero_copy: bool,
}

fn send(stream: &mut UnixStream, message: &Message) -> Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line).context("cannot send")
}

fn receive(reader: &mut BufReader<UnixStream>) -> Result<Message> {
    let mut line = String::new();
    if reader.read_line(&mut line).context("cannot receive")? == 0 {
        bail!("the other side closed the connection");
    }
    serde_json::from_str(&line).with_context(|| format!("not a take-over message: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Rialto of state version 1 (an upgrade's predecessor) hands over to
    /// one that reads versions 2 and 1: refused the first hello, welcomed
    /// by the second. One that reads neither is refused, with the reason.
    #[test]
    fn an_older_state_version_is_greeted_with_the_version_it_writes() {
        let dir = std::env::temp_dir().join(format!("rialto-greet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (releases, released) = mpsc::channel();
        listen(&dir, 1, releases).unwrap();
        let refused = Predecessor::greet(&dir, &[3], PROTOCOL).map(|p| p.pid);
        let welcomed = Predecessor::greet(&dir, &[2, 1], PROTOCOL).map(|p| p.pid);
        let _ = std::fs::remove_dir_all(&dir);
        let refused = refused.expect_err("version 3 alone is refused").to_string();
        assert!(
            refused.starts_with("take-over refused: ")
                && refused.contains("state version 1;")
                && refused.ends_with("asked with protocol 1 and state version 3"),
            "{refused}"
        );
        assert_eq!(welcomed.expect("welcomed"), std::process::id());
        drop(released);
    }
}
