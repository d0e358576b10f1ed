//! The config file watch: a change to the file reloads it exactly as SIGHUP does. The
//! directory is watched, not the file (an editor's atomic save and a Kubernetes ConfigMap
//! update, which swaps a `..data` symlink, both replace the file rather than write it);
//! events are debounced, and a reload is sent only when the file's bytes changed. A file
//! that does not parse is reported as a failed reload: the running config stays.
//! `watch_files` does the same for a TLS listener's certificate and key files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reload::Reload;

/// How long the directory must be quiet before the file is read (a swap is several
/// events; a half-written file is not read).
const SETTLE: Duration = Duration::from_millis(150);

/// A running watch; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `path` and sends a `Reload` on `reloads` each time its contents change. Call
/// it in a Tokio runtime. An error means the directory cannot be watched (the caller logs
/// it; SIGHUP still works).
pub fn watch_config(path: &Path, reloads: mpsc::Sender<Reload>) -> notify::Result<ConfigWatch> {
    let path = path.to_path_buf();
    let (watcher, rx) = watch_dirs(std::slice::from_ref(&path))?;
    let seen = std::fs::read(&path).ok();
    let task = tokio::spawn(follow(path, seen, rx, reloads));
    Ok(ConfigWatch {
        _watcher: watcher,
        task,
    })
}

/// Watches `paths` (a TLS listener's certificates and keys) the same way, and calls
/// `on_change` once the directories are quiet and some file's bytes changed (a certificate
/// and its key replaced one after the other are one change when written within `SETTLE`).
pub(crate) fn watch_files(
    paths: &[PathBuf],
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<ConfigWatch> {
    let (watcher, mut rx) = watch_dirs(paths)?;
    let paths = paths.to_vec();
    let read =
        move || -> Vec<Option<Vec<u8>>> { paths.iter().map(|p| std::fs::read(p).ok()).collect() };
    let mut seen = read();
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = read();
            if now != seen {
                seen = now;
                on_change();
            }
        }
    });
    Ok(ConfigWatch {
        _watcher: watcher,
        task,
    })
}

/// A watcher on the directories of `paths`; `rx` gets a signal when an event may have
/// changed one of the files.
fn watch_dirs(
    paths: &[PathBuf],
) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let names: Vec<PathBuf> = paths.iter().flat_map(|p| names(p)).collect();
    let (tx, rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A full channel already holds a reason to look.
        if event.is_ok_and(|e| relevant(&e, &names)) {
            let _ = tx.try_send(());
        }
    })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        for d in directories(p) {
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, rx))
}

/// Whether an event can have changed the file: a change (not a read: reading the file
/// here opens it, which is an event too) to one of `names` (not to another file of the
/// directory).
fn relevant(event: &notify::Event, names: &[PathBuf]) -> bool {
    !matches!(event.kind, EventKind::Access(_))
        && event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| names.iter().any(|m| m.as_os_str() == n))
        })
}

/// The names whose changes matter: the file's own, the Kubernetes ConfigMap's `..data`
/// link, and, when the file is a link, the name of the file it points to now.
fn names(path: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = vec![PathBuf::from("..data")];
    names.extend(path.file_name().map(PathBuf::from));
    if let Some(real) = std::fs::canonicalize(path)
        .ok()
        .and_then(|r| r.file_name().map(PathBuf::from))
    {
        names.push(real);
    }
    names
}

/// The directories whose changes can change what `path` reads: its own, and, when it is a
/// symbolic link, the one of the file it points to now.
fn directories(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        let same = std::fs::canonicalize(&dirs[0]).is_ok_and(|first| first == d);
        if !same {
            dirs.push(d);
        }
    }
    dirs
}

async fn follow(
    path: PathBuf,
    mut seen: Option<Vec<u8>>,
    mut events: mpsc::Receiver<()>,
    reloads: mpsc::Sender<Reload>,
) {
    while events.recv().await.is_some() {
        // Settle: wait until no event came for SETTLE.
        loop {
            match tokio::time::timeout(SETTLE, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let now = std::fs::read(&path).ok();
        if now == seen {
            continue;
        }
        seen = now;
        tracing::info!(path = %path.display(), "config file changed: reloading");
        if reloads.send(Reload::load(&path)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};

    #[test]
    fn changes_to_the_file_or_its_link_count_and_reads_and_neighbours_do_not() {
        let names = names(Path::new("/etc/teeproxy/tee.yaml"));
        let at = |kind: EventKind, name: &str| {
            notify::Event::new(kind).add_path(PathBuf::from("/etc/teeproxy").join(name))
        };
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(relevant(&at(modify, "tee.yaml"), &names));
        assert!(relevant(
            &at(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "..data"
            ),
            &names
        ));
        assert!(relevant(
            &at(EventKind::Create(CreateKind::File), "tee.yaml"),
            &names
        ));
        // Its own read of the file, and another file beside it.
        assert!(!relevant(
            &at(
                EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read)),
                "tee.yaml"
            ),
            &names
        ));
        assert!(!relevant(&at(modify, "admin-token"), &names));
    }
}
