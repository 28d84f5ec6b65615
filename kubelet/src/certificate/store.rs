//! The kubelet's certificate files (upstream client-go `certificate.NewFileStore`): each
//! certificate with its key in one `<prefix>-<timestamp>.pem`, and `<prefix>-current.pem`
//! a symlink to the one in use. An update writes the new file, points
//! `<prefix>-updated.pem` at it and renames that over `-current.pem`, so a reader never
//! sees a half-written pair and a crash leaves the old one current.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::CertificateError;

pub(crate) struct FileStore {
    dir: PathBuf,
    prefix: String,
}

impl FileStore {
    pub(crate) fn new(dir: &Path, prefix: &str) -> Self {
        FileStore {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
        }
    }

    fn file(&self, qualifier: &str) -> PathBuf {
        self.dir.join(format!("{}-{qualifier}.pem", self.prefix))
    }

    /// `<prefix>-current.pem`, the path a kubeconfig names.
    pub(crate) fn current_path(&self) -> PathBuf {
        self.file("current")
    }

    /// Writes `cert` and `key` (PEM) as the new current pair; returns the current path.
    pub(crate) fn update(&self, cert: &str, key: &str) -> Result<PathBuf, CertificateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertificateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let t = time::OffsetDateTime::now_utc();
        let stamp = format!(
            "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let pair = self.file(&stamp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pair)
            .map_err(io(&pair))?;
        f.write_all(cert.as_bytes())
            .and_then(|()| f.write_all(key.as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(io(&pair))?;
        let updated = self.file("updated");
        let _ = std::fs::remove_file(&updated);
        let target = pair.file_name().map(PathBuf::from).unwrap_or_default();
        std::os::unix::fs::symlink(&target, &updated).map_err(io(&updated))?;
        let current = self.current_path();
        std::fs::rename(&updated, &current).map_err(io(&current))?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_points_current_at_a_new_timestamped_pair() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(&dir.path().join("pki"), "kubelet-client");
        let current = store.update("CERT1\n", "KEY1\n").unwrap();
        assert_eq!(current, dir.path().join("pki/kubelet-client-current.pem"));
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "CERT1\nKEY1\n");
        let target = std::fs::read_link(&current).unwrap();
        let name = target.to_str().unwrap();
        assert!(
            name.starts_with("kubelet-client-2") && name.ends_with(".pem") && name.len() == 38,
            "{name}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&current).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("pki/kubelet-client-updated.pem").exists());
    }
}
