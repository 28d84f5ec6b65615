//! User namespaces for pods with `hostUsers: false` (upstream `pkg/kubelet/userns`): each
//! such pod gets its own block of `idsPerPod` host IDs (65536 by default) from the
//! kubelet's range, mapped to 0.. in the pod for both UIDs and GIDs. Blocks never
//! overlap, and each pod's is kept in `<root-dir>/pods/<uid>/userns` (upstream's file and
//! format), so a restarted kubelet gives a pod the same block and never gives it to
//! another.
//!
//! The range is the kubelet's line in /etc/subuid and /etc/subgid (user `kubelet`), else
//! upstream's default: every ID from 65536 up. ID 0 to 65535 are never handed out.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use nodus_proto::runtime::v1 as cri;
use serde::{Deserialize, Serialize};

/// Upstream's unit and default block size.
pub(crate) const USERNS_UNIT: u32 = 65536;
/// The file in the pod's directory.
const MAPPINGS_FILE: &str = "userns";

#[derive(Debug, thiserror::Error)]
pub(crate) enum UsernsError {
    /// The kubelet's range or idsPerPod do not fit together (the kubelet refuses to start).
    #[error("{0}")]
    Config(String),
    /// The runtime cannot make user namespaces.
    #[error("{0}")]
    Unsupported(String),
    #[error("create user namespace: could not find an empty slot to allocate a user namespace")]
    Exhausted,
    #[error("user namespace: invalid user namespace configuration: {0}")]
    Invalid(String),
    #[error("user namespace: {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdMapping {
    host_id: u32,
    container_id: u32,
    length: u32,
}

/// `<root-dir>/pods/<uid>/userns`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingsFile {
    uid_mappings: Vec<IdMapping>,
    gid_mappings: Vec<IdMapping>,
}

struct State {
    /// Blocks in use, as indices from the range's first block.
    used: BTreeSet<u32>,
    /// The first host ID of each pod's block.
    by_pod: HashMap<String, u32>,
}

pub(crate) struct UsernsManager {
    pods_dir: PathBuf,
    ids_per_pod: u32,
    /// The range's first block (its first ID / ids_per_pod) and its number of blocks.
    first_block: u32,
    blocks: u32,
    state: Mutex<State>,
}

/// The kubelet's range (first ID, length): `kubelet:<first>:<length>` in /etc/subuid,
/// which /etc/subgid must match; upstream's default without one.
pub(crate) fn kubelet_mappings(subuid: &str, subgid: &str) -> Result<(u32, u64), UsernsError> {
    let find = |text: &str| {
        text.lines().find_map(|l| {
            let mut f = l.trim().split(':');
            (f.next()? == "kubelet").then(|| {
                let first = f.next()?.parse::<u32>().ok()?;
                let len = f.next()?.parse::<u64>().ok()?;
                Some((first, len))
            })?
        })
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    match (find(&read(subuid)), find(&read(subgid))) {
        (None, None) => Ok((USERNS_UNIT, (1u64 << 32) - USERNS_UNIT as u64)),
        (Some(u), Some(g)) if u == g => Ok(u),
        (u, g) => Err(UsernsError::Config(format!(
            "kubelet mappings: the kubelet's subordinate IDs must be the same for users and groups ({subuid}: {u:?}, {subgid}: {g:?})"
        ))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UsernsManager {
    /// A manager over `range` (first ID, length) with blocks of `ids_per_pod`, enough for
    /// `max_pods`; records the blocks of the pods already on disk.
    pub(crate) fn new(
        pods_dir: PathBuf,
        range: (u32, u64),
        ids_per_pod: u32,
        max_pods: u32,
    ) -> Result<UsernsManager, UsernsError> {
        let (first, len) = range;
        let bad = |m: String| Err(UsernsError::Config(m));
        if ids_per_pod == 0 || !ids_per_pod.is_multiple_of(USERNS_UNIT) {
            return bad(format!(
                "kubelet user namespace length {ids_per_pod} is not a multiple of {USERNS_UNIT}"
            ));
        }
        if first % ids_per_pod != 0 {
            return bad(format!(
                "kubelet user assigned ID {first} is not a multiple of {ids_per_pod}"
            ));
        }
        if first < ids_per_pod {
            // Mapping host ID 0 would circumvent the point of it all.
            return bad(format!(
                "kubelet user assigned ID {first} must be greater or equal to {ids_per_pod}"
            ));
        }
        if len % ids_per_pod as u64 != 0 {
            return bad(format!(
                "kubelet user assigned IDs length {len} is not a multiple of {ids_per_pod}"
            ));
        }
        if len / (ids_per_pod as u64) < max_pods as u64 {
            return bad(format!(
                "kubelet user assigned IDs are not enough to support {max_pods} pods"
            ));
        }
        let m = UsernsManager {
            pods_dir,
            ids_per_pod,
            first_block: first / ids_per_pod,
            blocks: (len / ids_per_pod as u64).min(u32::MAX as u64) as u32,
            state: Mutex::new(State {
                used: BTreeSet::new(),
                by_pod: HashMap::new(),
            }),
        };
        if let Ok(dir) = std::fs::read_dir(&m.pods_dir) {
            for e in dir.flatten() {
                let uid = e.file_name().to_string_lossy().into_owned();
                if let Some(f) = m.read(&uid)? {
                    m.record(&mut lock(&m.state), &uid, &f)?;
                }
            }
        }
        Ok(m)
    }

    fn file(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid).join(MAPPINGS_FILE)
    }

    fn read(&self, uid: &str) -> Result<Option<MappingsFile>, UsernsError> {
        let path = self.file(uid);
        let data = match std::fs::read(&path) {
            Ok(d) if d.is_empty() => return Ok(None),
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(UsernsError::File { path, source }),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| UsernsError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Checks a pod's file as upstream does and marks its block used.
    fn record(&self, st: &mut State, uid: &str, f: &MappingsFile) -> Result<u32, UsernsError> {
        let bad = |m: &str| Err(UsernsError::Invalid(m.to_string()));
        let ([u], [g]) = (&f.uid_mappings[..], &f.gid_mappings[..]) else {
            return bad("exactly one UID and one GID mapping are allowed");
        };
        if u != g {
            return bad("GID and UID mapping should be identical");
        }
        if u.container_id != 0 {
            return bad("UID 0 must be mapped");
        }
        if u.length != self.ids_per_pod || u.host_id % self.ids_per_pod != 0 {
            return bad(&format!(
                "wrong user namespace range {}+{} for blocks of {}",
                u.host_id, u.length, self.ids_per_pod
            ));
        }
        let block = u.host_id / self.ids_per_pod;
        let Some(index) = block
            .checked_sub(self.first_block)
            .filter(|i| *i < self.blocks)
        else {
            return bad(&format!("id {} is out of range", u.host_id));
        };
        match st.by_pod.get(uid) {
            Some(&prev) if prev == u.host_id => return Ok(prev),
            Some(_) => {
                return bad(&format!(
                    "different user namespace range already used by pod {uid:?}"
                ))
            }
            None if st.used.contains(&index) => {
                return bad(&format!("range picked for pod {uid:?} already taken"))
            }
            None => {}
        }
        st.used.insert(index);
        st.by_pod.insert(uid.to_string(), u.host_id);
        Ok(u.host_id)
    }

    /// A free block, from a random place in the range (as upstream's allocator).
    fn allocate(&self, st: &mut State) -> Option<u32> {
        if st.used.len() as u64 >= self.blocks as u64 {
            return None;
        }
        let start = rand::random_range(0..self.blocks);
        let free = |from: u32, to: u32| (from..to).find(|i| !st.used.contains(i));
        let index = free(start, self.blocks).or_else(|| free(0, start))?;
        st.used.insert(index);
        Some((self.first_block + index) * self.ids_per_pod)
    }

    /// The pod's user namespace option for CRI: NODE unless it has `hostUsers: false`;
    /// then its block (made and written on first use). `supported` is whether the runtime
    /// handler can make user namespaces (or why that is unknown).
    pub(crate) fn get_or_create(
        &self,
        pod: &Pod,
        handler: &str,
        supported: Result<bool, String>,
    ) -> Result<cri::UserNamespace, UsernsError> {
        let node = cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        if pod.spec.as_ref().and_then(|s| s.host_users) != Some(false) {
            return Ok(node);
        }
        if supported != Ok(true) {
            let mut msg = if handler.is_empty() {
                "can't set `spec.hostUsers: false`, runtime does not support user namespaces"
                    .to_string()
            } else {
                format!("can't set `spec.hostUsers: false`, RuntimeClass handler {handler:?} does not support user namespaces")
            };
            if let Err(e) = supported {
                msg = format!("{msg}: {e}");
            }
            return Err(UsernsError::Unsupported(msg));
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let mut st = lock(&self.state);
        // Known pods (those on disk at start too) are answered from memory.
        let first = if let Some(&first) = st.by_pod.get(uid) {
            first
        } else if let Some(f) = self.read(uid)? {
            self.record(&mut st, uid, &f)?
        } else {
            let first = self.allocate(&mut st).ok_or(UsernsError::Exhausted)?;
            let m = IdMapping {
                host_id: first,
                container_id: 0,
                length: self.ids_per_pod,
            };
            let f = MappingsFile {
                uid_mappings: vec![m],
                gid_mappings: vec![m],
            };
            if let Err(e) = self.write(uid, &f) {
                st.used
                    .remove(&(first / self.ids_per_pod - self.first_block));
                return Err(e);
            }
            st.by_pod.insert(uid.to_string(), first);
            first
        };
        let map = cri::IdMapping {
            host_id: first,
            container_id: 0,
            length: self.ids_per_pod,
        };
        Ok(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![map],
            gids: vec![map],
        })
    }

    /// Atomically, and durably (the directory is synced too), as upstream's file store.
    fn write(&self, uid: &str, f: &MappingsFile) -> Result<(), UsernsError> {
        let path = self.file(uid);
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let io = |source| UsernsError::File {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(".{MAPPINGS_FILE}.tmp"));
        let data = serde_json::to_vec(f).unwrap_or_default();
        {
            use std::io::Write;
            let mut out = std::fs::File::create(&tmp).map_err(io)?;
            out.write_all(&data).map_err(io)?;
            out.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Frees the pod's block (its directory is being removed).
    pub(crate) fn release(&self, uid: &str) {
        let mut st = lock(&self.state);
        if let Some(first) = st.by_pod.remove(uid) {
            st.used
                .remove(&(first / self.ids_per_pod - self.first_block));
            let _ = std::fs::remove_file(self.file(uid));
            tracing::debug!(pod_uid = %uid, first, "released the pod's user namespace IDs");
        }
    }

    /// Pods holding a block.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> Vec<(String, u32)> {
        let st = lock(&self.state);
        let mut v: Vec<_> = st.by_pod.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, host_users: Option<bool>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": {"hostUsers": host_users, "containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap()
    }

    fn manager(dir: &Path, blocks: u64) -> UsernsManager {
        UsernsManager::new(
            dir.to_path_buf(),
            (USERNS_UNIT, blocks * USERNS_UNIT as u64),
            USERNS_UNIT,
            blocks as u32,
        )
        .unwrap()
    }

    #[test]
    fn pods_get_disjoint_blocks_kept_across_restarts_and_freed_on_release() {
        let d = tempfile::tempdir().unwrap();
        let m = manager(d.path(), 3);
        let mut firsts = vec![];
        for uid in ["a", "b", "c"] {
            let ns = m
                .get_or_create(&pod(uid, Some(false)), "", Ok(true))
                .unwrap();
            assert_eq!(ns.mode, cri::NamespaceMode::Pod as i32);
            assert_eq!(ns.uids, ns.gids);
            let [u] = &ns.uids[..] else { panic!("{ns:?}") };
            assert_eq!((u.container_id, u.length), (0, USERNS_UNIT));
            assert!(u.host_id >= USERNS_UNIT && u.host_id % USERNS_UNIT == 0);
            firsts.push(u.host_id);
        }
        let mut sorted = firsts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "no block given twice: {firsts:?}");
        // The range is full.
        let e = m
            .get_or_create(&pod("d", Some(false)), "", Ok(true))
            .unwrap_err();
        assert!(matches!(e, UsernsError::Exhausted), "{e}");
        // Asked again, a pod keeps its block.
        let again = m
            .get_or_create(&pod("b", Some(false)), "", Ok(true))
            .unwrap();
        assert_eq!(again.uids[0].host_id, firsts[1]);
        // A restarted kubelet reads the blocks back from the pods' files.
        let text = std::fs::read_to_string(d.path().join("a/userns")).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"uidMappings":[{{"hostId":{0},"containerId":0,"length":65536}}],"gidMappings":[{{"hostId":{0},"containerId":0,"length":65536}}]}}"#,
                firsts[0]
            )
        );
        let m2 = manager(d.path(), 3);
        assert_eq!(
            m2.allocated(),
            vec![
                ("a".into(), firsts[0]),
                ("b".into(), firsts[1]),
                ("c".into(), firsts[2])
            ]
        );
        // Releasing a pod frees its block for the next one.
        m2.release("b");
        assert!(!d.path().join("b/userns").exists());
        let d_ns = m2
            .get_or_create(&pod("d", Some(false)), "", Ok(true))
            .unwrap();
        assert_eq!(d_ns.uids[0].host_id, firsts[1]);
    }

    #[test]
    fn host_users_pods_get_node_mode_and_unsupported_runtimes_refuse_the_pod() {
        let d = tempfile::tempdir().unwrap();
        let m = manager(d.path(), 2);
        for hu in [None, Some(true)] {
            let ns = m.get_or_create(&pod("a", hu), "", Err("x".into())).unwrap();
            assert_eq!(ns.mode, cri::NamespaceMode::Node as i32);
            assert!(ns.uids.is_empty());
        }
        let e = m
            .get_or_create(
                &pod("a", Some(false)),
                "",
                Err("the handler \"\" is not known".into()),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "can't set `spec.hostUsers: false`, runtime does not support user namespaces: the handler \"\" is not known"
        );
        let e = m
            .get_or_create(&pod("a", Some(false)), "kata", Ok(false))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "can't set `spec.hostUsers: false`, RuntimeClass handler \"kata\" does not support user namespaces"
        );
        // Nothing was allocated for the refused pod.
        assert!(m.allocated().is_empty());
        assert!(!d.path().join("a/userns").exists());
    }

    #[test]
    fn bad_ranges_and_files_are_refused_with_upstreams_words() {
        let d = tempfile::tempdir().unwrap();
        let new = |range, per, max| {
            UsernsManager::new(d.path().to_path_buf(), range, per, max)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            new((0, 1 << 30), USERNS_UNIT, 110).as_deref(),
            Some("kubelet user assigned ID 0 must be greater or equal to 65536")
        );
        assert_eq!(
            new((USERNS_UNIT, 10 * USERNS_UNIT as u64), USERNS_UNIT, 110).as_deref(),
            Some("kubelet user assigned IDs are not enough to support 110 pods")
        );
        assert_eq!(
            new((USERNS_UNIT, 1 << 30), 1000, 110).as_deref(),
            Some("kubelet user namespace length 1000 is not a multiple of 65536")
        );
        assert_eq!(
            new(
                (USERNS_UNIT, (1 << 32) - USERNS_UNIT as u64),
                USERNS_UNIT,
                110
            ),
            None
        );
        // A pod file that maps host root is refused, and so is a kubelet start over it.
        std::fs::create_dir_all(d.path().join("x")).unwrap();
        std::fs::write(
            d.path().join("x/userns"),
            r#"{"uidMappings":[{"hostId":0,"containerId":0,"length":65536}],"gidMappings":[{"hostId":0,"containerId":0,"length":65536}]}"#,
        )
        .unwrap();
        let e = new((USERNS_UNIT, 4 * USERNS_UNIT as u64), USERNS_UNIT, 4).unwrap();
        assert_eq!(
            e,
            "user namespace: invalid user namespace configuration: id 0 is out of range"
        );
    }

    #[test]
    fn the_kubelet_range_comes_from_subuid_and_subgid() {
        let d = tempfile::tempdir().unwrap();
        let (u, g) = (d.path().join("subuid"), d.path().join("subgid"));
        let p = |x: &Path| x.to_str().unwrap().to_string();
        assert_eq!(
            kubelet_mappings(&p(&u), &p(&g)).unwrap(),
            (65536, (1 << 32) - 65536)
        );
        std::fs::write(&u, "alice:100000:65536\nkubelet:2147483648:2147483648\n").unwrap();
        std::fs::write(&g, "kubelet:2147483648:2147483648\n").unwrap();
        assert_eq!(
            kubelet_mappings(&p(&u), &p(&g)).unwrap(),
            (1 << 31, 1 << 31)
        );
        std::fs::write(&g, "kubelet:65536:65536\n").unwrap();
        assert!(kubelet_mappings(&p(&u), &p(&g)).is_err());
    }
}
