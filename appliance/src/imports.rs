//! Following the Kubernetes files a config imports (`[[import]] file =`):
//! a controller that writes them (in place, or renamed over them) is all
//! the integration Rialto needs. A change to one asks for a reload, as
//! SIGHUP does; a bad file is refused with its line and the running config
//! stays, as for any reload.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{info, warn};

/// How long the files must stay quiet before the reload: a controller's
/// write is often several events (create, write, rename).
const SETTLE: Duration = Duration::from_millis(100);

/// The watch on a config's imported files.
pub struct Imports {
    watcher: RecommendedWatcher,
    /// The files followed, and the directories watched for them.
    files: Arc<Mutex<Vec<PathBuf>>>,
    dirs: Vec<PathBuf>,
    /// Set by a change to one of `files`; when it last changed.
    changed: Arc<AtomicBool>,
    last: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for Imports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports").field("dirs", &self.dirs).finish()
    }
}

impl Imports {
    pub fn new() -> Result<Self> {
        let files: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let changed = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(Instant::now()));
        let (seen, flag, when) = (Arc::clone(&files), Arc::clone(&changed), Arc::clone(&last));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let files = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if event.paths.iter().any(|p| files.contains(p)) {
                *when
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
                flag.store(true, Ordering::Release);
            }
        })
        .context("cannot watch the imported files (inotify)")?;
        Ok(Self {
            watcher,
            files,
            dirs: Vec::new(),
            changed,
            last,
        })
    }

    /// Follows the files `config` imports now (after a start or a reload:
    /// the set may have changed). Their directories are watched, so a file
    /// renamed over is seen too.
    pub fn follow(&mut self, config: &Path) {
        let files = imported(config);
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = self.watcher.unwatch(dir);
        }
        for dir in dirs.iter().filter(|d| !self.dirs.contains(d)) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), "cannot follow the imported files there: {e}");
            }
        }
        if !files.is_empty() && files != *self.files() {
            info!(files = ?files, "following the imported files");
        }
        *self.files() = files;
        self.dirs = dirs;
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an imported file changed and has been quiet since for a
    /// moment: then it is time to reload (once).
    pub fn settled_change(&self) -> bool {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.changed.load(Ordering::Acquire)
            && last.elapsed() >= SETTLE
            && self.changed.swap(false, Ordering::AcqRel)
    }
}

/// The files the config at `config` imports, as absolute paths; none if it
/// cannot be read or parsed (the reload will say why).
fn imported(config: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(config) else {
        return Vec::new();
    };
    let Ok(parsed) = rialto_rules::config::Config::parse(&text) else {
        return Vec::new();
    };
    let dir = config.parent().unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    parsed
        .imports
        .iter()
        .map(|i| dir.join(i.file.get_ref()))
        .collect()
}
