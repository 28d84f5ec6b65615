//! Upstream's atomic writer (`pkg/volume/util/atomic_writer.go`) for configMap, secret,
//! projected and downwardAPI volumes: the files live in a timestamped directory
//! `..<timestamp>`, `..data` is a symlink to it, and each visible name is a symlink through
//! `..data`. An update writes a new timestamped directory and swaps `..data` with one
//! rename, so a container reading the volume sees either the old set or the new one, never
//! a mix; the old directory is removed afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub(crate) const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileProjection {
    pub(crate) data: Vec<u8>,
    pub(crate) mode: u32,
}

/// Relative path -> content; paths are checked by [`check_path`].
pub(crate) type Payload = BTreeMap<String, FileProjection>;

/// Why a payload path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 4096 characters")]
    TooLong,
    #[error("{path:?} must be a relative path")]
    Absolute { path: String },
    #[error("{path:?} must not contain '..'")]
    ParentDir { path: String },
    #[error("{path:?} must not start with '..'")]
    DotDotPrefix { path: String },
}

/// A payload path must be relative, without `..` elements, and not start with `..`.
pub(crate) fn check_path(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > 4096 {
        return Err(PathError::TooLong);
    }
    let path = Path::new(p);
    let owned = || p.to_string();
    if path.is_absolute() {
        return Err(PathError::Absolute { path: owned() });
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(PathError::ParentDir { path: owned() });
    }
    if p.starts_with("..") {
        return Err(PathError::DotDotPrefix { path: owned() });
    }
    Ok(())
}

fn first_component(p: &str) -> String {
    Path::new(p)
        .components()
        .find_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What the payload currently in `dir` holds (None when nothing was written yet).
fn current(dir: &Path) -> Option<(PathBuf, Payload)> {
    let target = std::fs::read_link(dir.join(DATA_DIR)).ok()?;
    let ts_dir = dir.join(&target);
    let mut out = Payload::new();
    fn walk(base: &Path, sub: &Path, out: &mut Payload) -> io::Result<()> {
        for e in std::fs::read_dir(base.join(sub))? {
            let e = e?;
            let rel = sub.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(base, &rel, out)?;
            } else if ft.is_file() {
                let p = base.join(&rel);
                let data = std::fs::read(&p)?;
                let mode = std::fs::metadata(&p)?.permissions().mode() & 0o7777;
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    FileProjection { data, mode },
                );
            }
        }
        Ok(())
    }
    walk(&ts_dir, Path::new(""), &mut out).ok()?;
    Some((ts_dir, out))
}

fn timestamp_dir_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let now = k8s_openapi::jiff::Timestamp::now();
    format!(
        "..{}.{:09}{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `payload` into `dir` atomically; returns false when it was already there.
/// `gid` (fsGroup) owns the files when given.
pub(crate) fn write(dir: &Path, payload: &Payload, gid: Option<u32>) -> io::Result<bool> {
    for p in payload.keys() {
        check_path(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    std::fs::create_dir_all(dir)?;
    let old = current(dir);
    if let Some((_, have)) = &old {
        if have == payload {
            return Ok(false);
        }
    }
    // 1. The new generation in its own directory.
    let ts_dir = dir.join(timestamp_dir_name());
    std::fs::create_dir(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (p, f) in payload {
        let file = ts_dir.join(p);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, &f.data)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(f.mode))?;
        if let Some(g) = gid {
            std::os::unix::fs::chown(&file, None, Some(g))?;
        }
    }
    // 2. Swap ..data to it in one rename.
    let tmp = dir.join(DATA_DIR_TMP);
    let _ = std::fs::remove_file(&tmp);
    symlink(ts_dir.file_name().unwrap_or_default(), &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_DIR))?;
    // 3. The visible names: a symlink through ..data for each top-level element.
    let wanted: BTreeSet<String> = payload.keys().map(|p| first_component(p)).collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    if let Some((old_dir, have)) = old {
        for name in have.keys().map(|p| first_component(p)) {
            if !wanted.contains(&name) {
                let _ = std::fs::remove_file(dir.join(&name));
            }
        }
        let _ = std::fs::remove_dir_all(old_dir);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FileProjection {
        FileProjection {
            data: s.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    #[test]
    fn writes_links_and_swaps_generations() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        let p1: Payload = [("a".to_string(), f("1")), ("sub/b".to_string(), f("2"))].into();
        assert!(write(&dir, &p1, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let gen1 = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert!(gen1.to_string_lossy().starts_with(".."));
        // The same payload again writes nothing.
        assert!(!write(&dir, &p1, None).unwrap());
        // A new payload: new generation, removed key gone, old generation removed.
        let p2: Payload = [("a".to_string(), f("3")), ("c".to_string(), f("4"))].into();
        assert!(write(&dir, &p2, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&gen1).exists());
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA_DIR)
            .collect();
        assert_eq!(entries.len(), 1, "one generation left: {entries:?}");
    }

    #[test]
    fn bad_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for p in ["/etc/passwd", "../x", "a/../../x", "..data", ""] {
            let payload: Payload = [(p.to_string(), f("x"))].into();
            assert!(write(d.path(), &payload, None).is_err(), "{p:?}");
        }
    }

    #[test]
    fn modes_are_applied() {
        let d = tempfile::tempdir().unwrap();
        let payload: Payload = [(
            "k".to_string(),
            FileProjection {
                data: b"v".to_vec(),
                mode: 0o400,
            },
        )]
        .into();
        write(d.path(), &payload, None).unwrap();
        let m = std::fs::metadata(d.path().join("k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o400);
    }

    #[test]
    fn bad_paths_are_named() {
        let msg = |p: &str| check_path(p).unwrap_err().to_string();
        assert_eq!(msg(""), "must not be empty");
        assert_eq!(msg("/etc/x"), "\"/etc/x\" must be a relative path");
        assert_eq!(msg("a/../b"), "\"a/../b\" must not contain '..'");
        assert_eq!(msg("..data"), "\"..data\" must not start with '..'");
        assert!(check_path("a/b").is_ok());
    }
}
