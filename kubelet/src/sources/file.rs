//! The file source: a directory of static pod manifests (or one manifest file). Changes are
//! picked up at once through inotify and the whole directory is re-read every
//! `fileCheckFrequency` as well (and whenever inotify cannot be used). Every read sends a
//! full snapshot; `pod_config` works out what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use inotify::{Inotify, WatchMask};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{load_manifest, Source, SourceUpdate};

/// What a file held when it was last parsed, keyed by its identity and modification.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(meta: &std::fs::Metadata) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    FileStamp {
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    }
}

/// Parsed manifests by path, so a re-read parses (and reports) only files that changed.
#[derive(Debug, Default)]
pub(crate) struct ManifestCache {
    files: HashMap<PathBuf, (FileStamp, Vec<Pod>)>,
}

/// Reads every manifest under `path` (sorted by file name, hidden files skipped), parsing
/// only files that changed since the last call with this cache. Bad manifests are logged
/// with their file and field and left out.
pub(crate) fn read_path_cached(
    path: &Path,
    node_name: &str,
    cache: &mut ManifestCache,
) -> std::io::Result<Vec<Pod>> {
    let meta = std::fs::metadata(path)?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_file())
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    cache.files.retain(|p, _| files.contains(p));
    let mut pods = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        let st = stamp(&meta);
        if let Some((cached, parsed)) = cache.files.get(&f) {
            if *cached == st {
                pods.extend(parsed.iter().cloned());
                continue;
            }
        }
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %origin, error = %e, "cannot read manifest, skipped");
                continue;
            }
        };
        let (ok, errors) = load_manifest(&text, Source::File, &origin, node_name);
        for e in errors {
            tracing::error!(file = %e.origin, field = %e.field, reason = %e.reason, "invalid static pod manifest, skipped");
        }
        pods.extend(ok.iter().cloned());
        cache.files.insert(f, (st, ok));
    }
    Ok(pods)
}

/// Watches a manifest directory and sends snapshots until the receiver goes away.
pub(crate) struct FileSource {
    pub(crate) path: PathBuf,
    pub(crate) node_name: String,
    pub(crate) period: Duration,
}

const WATCH_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

impl FileSource {
    fn snapshot(&self, cache: &mut ManifestCache) -> Option<SourceUpdate> {
        match read_path_cached(&self.path, &self.node_name, cache) {
            Ok(pods) => Some(SourceUpdate {
                source: Source::File,
                pods,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Upstream treats a missing directory as empty (and keeps checking).
                tracing::debug!(path = %self.path.display(), "static pod path does not exist");
                Some(SourceUpdate {
                    source: Source::File,
                    pods: Vec::new(),
                })
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read static pod path");
                None
            }
        }
    }

    fn watch(&self) -> Option<inotify::EventStream<Vec<u8>>> {
        let inotify = Inotify::init()
            .map_err(|e| tracing::warn!(error = %e, "inotify unavailable, polling only"))
            .ok()?;
        inotify.watches().add(&self.path, WATCH_MASK).ok()?;
        inotify.into_event_stream(vec![0u8; 4096]).ok()
    }

    pub(crate) async fn run(self, tx: mpsc::Sender<SourceUpdate>) {
        let mut ticker = tokio::time::interval(self.period.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stream = self.watch();
        let mut cache = ManifestCache::default();
        loop {
            let reread = match stream.as_mut() {
                Some(s) => tokio::select! {
                    _ = ticker.tick() => true,
                    ev = s.next() => match ev {
                        Some(Ok(ev)) => {
                            let gone = |mask: inotify::EventMask| mask.intersects(
                                inotify::EventMask::DELETE_SELF
                                    | inotify::EventMask::MOVE_SELF
                                    | inotify::EventMask::IGNORED,
                            );
                            let mut lost = gone(ev.mask);
                            // One re-read for every event already queued (a burst of files).
                            while let Some(Some(Ok(more))) = s.next().now_or_never() {
                                lost |= gone(more.mask);
                            }
                            if lost {
                                stream = None;
                            }
                            true
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "inotify read failed");
                            stream = None;
                            true
                        }
                        None => { stream = None; true }
                    },
                },
                None => {
                    ticker.tick().await;
                    stream = self.watch();
                    true
                }
            };
            if reread {
                if let Some(update) = self.snapshot(&mut cache) {
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_reparses_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let pod = |cmd: &str| {
            format!("kind: Pod\nmetadata: {{name: a}}\nspec: {{containers: [{{name: c, image: 'i:1', command: [{cmd}]}}]}}\n")
        };
        std::fs::write(dir.path().join("a.yaml"), pod("x")).unwrap();
        let mut cache = ManifestCache::default();
        let first = read_path_cached(dir.path(), "n", &mut cache).unwrap();
        let again = read_path_cached(dir.path(), "n", &mut cache).unwrap();
        assert_eq!(first, again);
        // Rewritten with the same size: still seen as changed (new mtime or inode).
        std::thread::sleep(std::time::Duration::from_millis(5));
        let tmp = dir.path().join(".a.tmp");
        std::fs::write(&tmp, pod("y")).unwrap();
        std::fs::rename(&tmp, dir.path().join("a.yaml")).unwrap();
        let edited = read_path_cached(dir.path(), "n", &mut cache).unwrap();
        assert_ne!(first[0].metadata.uid, edited[0].metadata.uid);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(read_path_cached(dir.path(), "n", &mut cache)
            .unwrap()
            .is_empty());
        assert!(cache.files.is_empty());
    }

    #[tokio::test]
    async fn directory_changes_are_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let src = FileSource {
            path: dir.path().to_path_buf(),
            node_name: "n".into(),
            period: Duration::from_secs(3600),
        };
        tokio::spawn(src.run(tx));
        // The first tick gives the initial (empty) snapshot.
        let first = rx.recv().await.unwrap();
        assert!(first.pods.is_empty());
        std::fs::write(
            dir.path().join("a.yaml"),
            "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: 'i:1'}]}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\nmetadata: {}\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let u = rx.recv().await.unwrap();
                if !u.pods.is_empty() {
                    return u;
                }
            }
        })
        .await
        .expect("inotify must report the new file without waiting for the period");
        assert_eq!(got.pods.len(), 1);
        assert_eq!(got.pods[0].metadata.name.as_deref(), Some("a-n"));
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if rx.recv().await.unwrap().pods.is_empty() {
                    return;
                }
            }
        })
        .await
        .expect("removal must be seen at once");
    }
}
