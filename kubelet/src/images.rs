//! Image garbage collection (upstream `ImageGCManager`): when the image filesystem is
//! fuller than `imageGCHighThresholdPercent`, images no container uses are removed, least
//! recently used first, until usage is down to `imageGCLowThresholdPercent`. Images seen
//! for less than `imageMinimumGCAge`, pinned images and the sandbox image (the kubelet's
//! `--pod-infra-container-image` and the one the runtime is configured with) are kept.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nodus_proto::runtime::v1 as cri;

use crate::kuberuntime::cri::Cri;

/// How often the image filesystem is checked (upstream checks every 5 minutes; the check
/// is a few cheap CRI calls and a statvfs).
pub(crate) const GC_PERIOD: Duration = Duration::from_secs(10);

pub(crate) struct ImageGc {
    pub(crate) cri: Cri,
    pub(crate) high_percent: u8,
    pub(crate) low_percent: u8,
    pub(crate) min_age: Duration,
    /// The sandbox image (by name), never removed.
    pub(crate) pinned_image: String,
}

/// What the GC remembers of an image.
#[derive(Debug, Clone, Copy)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// (capacity, available) bytes of the filesystem holding `path`.
fn fs_space(path: &str) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * frag,
        st.blocks_available() as u64 * frag,
    ))
}

/// The images to remove, oldest use first, until `to_free` bytes are freed. Pure.
fn choose(
    images: &[cri::Image],
    in_use: &HashSet<String>,
    records: &HashMap<String, Record>,
    now: Instant,
    min_age: Duration,
    to_free: u64,
) -> Vec<(String, u64)> {
    let mut candidates: Vec<(&cri::Image, Record)> = images
        .iter()
        .filter(|i| !i.pinned && !in_use.contains(&i.id))
        .filter_map(|i| Some((i, *records.get(&i.id)?)))
        .filter(|(_, r)| now.duration_since(r.first_detected) >= min_age)
        .collect();
    candidates.sort_by_key(|(_, r)| r.last_used);
    let mut freed = 0;
    let mut out = Vec::new();
    for (i, _) in candidates {
        if freed >= to_free {
            break;
        }
        freed += i.size;
        out.push((i.id.clone(), i.size));
    }
    out
}

/// Why one image garbage collection pass stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageGcError {
    #[error(transparent)]
    Cri(#[from] crate::kuberuntime::cri::CriError),
    #[error("cannot statvfs the image filesystem {mount}")]
    Statvfs { mount: String },
}

impl ImageGc {
    pub(crate) async fn run(self, period: Duration) {
        if self.high_percent >= 100 {
            tracing::info!("image GC disabled (imageGCHighThresholdPercent 100)");
            return;
        }
        let mut records: HashMap<String, Record> = HashMap::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.once(&mut records).await {
                tracing::warn!(error = %e, "image garbage collection failed");
            }
        }
    }

    async fn once(&self, records: &mut HashMap<String, Record>) -> Result<(), ImageGcError> {
        let now = Instant::now();
        let images = self.cri.list_images().await?;
        let containers = self.cri.list_containers(Default::default()).await?;
        let mut in_use: HashSet<String> = HashSet::new();
        for c in &containers {
            in_use.insert(c.image_ref.clone());
            if let Some(i) = &c.image {
                in_use.insert(i.image.clone());
            }
        }
        for i in &images {
            if i.repo_tags.contains(&self.pinned_image) {
                in_use.insert(i.id.clone());
            }
        }
        // Remember when each image was first seen and last used.
        let ids: HashSet<&String> = images.iter().map(|i| &i.id).collect();
        records.retain(|id, _| ids.contains(id));
        for i in &images {
            let r = records.entry(i.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            if in_use.contains(&i.id) {
                r.last_used = now;
            }
        }
        let fs = self.cri.image_fs_info().await?;
        let Some(mount) = fs
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.clone())
        else {
            return Ok(());
        };
        let Some((capacity, available)) = fs_space(&mount) else {
            return Err(ImageGcError::Statvfs { mount });
        };
        if capacity == 0 {
            return Ok(());
        }
        let usage = (capacity - available.min(capacity)) * 100 / capacity;
        if usage < self.high_percent as u64 {
            return Ok(());
        }
        // The runtime's own sandbox image is kept too: between pods nothing uses it, and a
        // runtime without a registry to pull it from again could not start a pod.
        match self.cri.sandbox_image().await {
            Ok(Some(sandbox)) => {
                for i in images.iter().filter(|i| i.repo_tags.contains(&sandbox)) {
                    in_use.insert(i.id.clone());
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot ask the runtime for its sandbox image"),
        }
        let target = capacity * (100 - self.low_percent as u64) / 100;
        let to_free = target.saturating_sub(available);
        tracing::info!(
            usage,
            high = self.high_percent,
            to_free,
            "image filesystem above the high threshold, removing unused images"
        );
        let mut freed = 0u64;
        for (id, size) in choose(&images, &in_use, records, now, self.min_age, to_free) {
            match self.cri.remove_image(&id).await {
                Ok(()) => {
                    tracing::info!(image = %id, size, "removed unused image");
                    records.remove(&id);
                    freed += size;
                }
                Err(e) => tracing::warn!(image = %id, error = %e, "cannot remove image"),
            }
        }
        if freed < to_free {
            tracing::warn!(
                freed,
                wanted = to_free,
                "image GC could not free enough space"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, size: u64, pinned: bool) -> cri::Image {
        cri::Image {
            id: id.into(),
            size,
            pinned,
            ..Default::default()
        }
    }

    #[test]
    fn chooses_unused_oldest_first() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100);
        let images = vec![
            img("used", 10, false),
            img("pinned", 10, true),
            img("old", 5, false),
            img("new", 7, false),
            img("young", 9, false),
        ];
        let rec = |first: Instant, last: Instant| Record {
            first_detected: first,
            last_used: last,
        };
        let records = HashMap::from([
            ("used".to_string(), rec(t0, t0)),
            ("pinned".to_string(), rec(t0, t0)),
            ("old".to_string(), rec(t0, t0)),
            ("new".to_string(), rec(t0, t0 + Duration::from_secs(50))),
            ("young".to_string(), rec(later, later)),
        ]);
        let in_use = HashSet::from(["used".to_string()]);
        let now = later + Duration::from_secs(10);
        let min_age = Duration::from_secs(60);
        let ids = |v: Vec<(String, u64)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(
            ids(choose(&images, &in_use, &records, now, min_age, 1)),
            ["old"]
        );
        assert_eq!(
            ids(choose(&images, &in_use, &records, now, min_age, 100)),
            ["old", "new"]
        );
        assert!(choose(&images, &in_use, &records, now, min_age, 0).is_empty());
    }

    // One GC pass on the fake runtime.

    use crate::kuberuntime::cri::fake::FakeRuntime;
    use std::sync::Arc;

    /// A GC that wants to free everything it can (high and low thresholds at 0).
    fn gc(fake: &Arc<FakeRuntime>, min_age: Duration) -> ImageGc {
        ImageGc {
            cri: fake.cri(),
            high_percent: 0,
            low_percent: 0,
            min_age,
            pinned_image: "pause:1".into(),
        }
    }

    /// Images `used:1` (a container runs it), `pause:1` (the sandbox image) and two unused.
    fn runtime() -> Arc<FakeRuntime> {
        let fake = FakeRuntime::new();
        let dir = std::env::temp_dir();
        fake.set_image_fs(dir.to_str().unwrap());
        for name in ["used:1", "pause:1", "old:1", "older:1"] {
            fake.add_image(name, 10);
        }
        let sb = fake.add_sandbox("u", true);
        let c = fake.add_container("u", &sb, "a", cri::ContainerState::ContainerRunning);
        // The container's image is known by reference, as containerd lists it.
        fake.set_container_image(&c, "used:1", "sha256:used:1");
        fake
    }

    #[tokio::test]
    async fn gc_removes_only_unused_unpinned_images() {
        let fake = runtime();
        let mut records = HashMap::new();
        gc(&fake, Duration::ZERO).once(&mut records).await.unwrap();
        let mut removed = fake.calls_of("RemoveImage");
        removed.sort();
        assert_eq!(removed, ["sha256:old:1", "sha256:older:1"]);
        let mut left = fake.image_ids();
        left.sort();
        assert_eq!(left, ["sha256:pause:1", "sha256:used:1"]);
        // The removed images are forgotten.
        assert_eq!(records.len(), 2);
    }

    #[tokio::test]
    async fn gc_keeps_the_sandbox_image_the_runtime_is_configured_with() {
        let fake = runtime();
        fake.set_sandbox_image("old:1");
        gc(&fake, Duration::ZERO)
            .once(&mut HashMap::new())
            .await
            .unwrap();
        assert_eq!(fake.calls_of("RemoveImage"), ["sha256:older:1"]);
    }

    #[tokio::test]
    async fn gc_keeps_images_younger_than_the_minimum_age() {
        let fake = runtime();
        let mut records = HashMap::new();
        gc(&fake, Duration::from_secs(3600))
            .once(&mut records)
            .await
            .unwrap();
        assert_eq!(fake.count("RemoveImage"), 0);
        assert_eq!(records.len(), 4, "first seen now");
    }

    #[tokio::test]
    async fn gc_does_nothing_below_the_high_threshold() {
        let fake = runtime();
        let mut g = gc(&fake, Duration::ZERO);
        g.high_percent = 100;
        g.once(&mut HashMap::new()).await.unwrap();
        assert_eq!(fake.count("RemoveImage"), 0);
        assert_eq!(fake.count("ImageFsInfo"), 1);
    }

    #[tokio::test]
    async fn gc_goes_on_after_a_failed_removal_and_reports_list_errors() {
        let fake = runtime();
        fake.inject_error("RemoveImage", tonic::Code::FailedPrecondition);
        let mut records = HashMap::new();
        gc(&fake, Duration::ZERO).once(&mut records).await.unwrap();
        assert_eq!(fake.count("RemoveImage"), 2);
        assert_eq!(fake.image_ids().len(), 3, "one of the two could be removed");
        fake.inject_error("ListImages", tonic::Code::Unavailable);
        assert!(gc(&fake, Duration::ZERO).once(&mut records).await.is_err());
    }
}
