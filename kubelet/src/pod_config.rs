//! `pod_config` merges the snapshots of every pod source by UID into incremental updates
//! (upstream's ADD / UPDATE / REMOVE / RECONCILE), rejects duplicate pod names (the later
//! one loses and is logged) and tells when every configured source has been heard from
//! (housekeeping must not remove pods before that).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Pod;

use crate::pod_util::{full_name, uid_of};
use crate::sources::{Source, SourceUpdate, CONFIG_ORIGIN_ANNOTATION};

/// One incremental change to the desired set of pods.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PodUpdate {
    /// New pods.
    Add(Vec<Pod>),
    /// Pods whose spec changed (same UID).
    Update(Vec<Pod>),
    /// Pods no longer in their source.
    Remove(Vec<Pod>),
    /// Pods whose only changes are in status (nothing for the runtime to do).
    Reconcile(Vec<Pod>),
}

fn origin(pod: &Pod) -> &str {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_ORIGIN_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("")
}

/// Upstream's `podsDifferSemantically`: what makes a pod an UPDATE for the runtime (spec,
/// labels, annotations, deletion), as opposed to a RECONCILE (status and bookkeeping
/// metadata such as resourceVersion, which change on every status write).
fn differ_semantically(a: &Pod, b: &Pod) -> bool {
    a.spec != b.spec
        || a.metadata.labels != b.metadata.labels
        || a.metadata.annotations != b.metadata.annotations
        || a.metadata.deletion_timestamp != b.metadata.deletion_timestamp
        || a.metadata.deletion_grace_period_seconds != b.metadata.deletion_grace_period_seconds
}

/// The merged state of all sources.
#[derive(Debug, Default)]
pub(crate) struct PodConfig {
    sources: BTreeMap<Source, BTreeMap<String, Pod>>,
    seen: BTreeSet<Source>,
}

impl PodConfig {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True once each of `expected` has sent at least one snapshot.
    pub(crate) fn sources_ready(&self, expected: &[Source]) -> bool {
        expected.iter().all(|s| self.seen.contains(s))
    }

    #[cfg(test)]
    /// All pods currently desired, across sources.
    pub(crate) fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.sources.values().flat_map(|m| m.values())
    }

    /// Applies one source snapshot and returns the changes it makes, in the order
    /// REMOVE, ADD, UPDATE, RECONCILE (so that a renamed-in-place pod frees its name first).
    pub(crate) fn merge(&mut self, update: SourceUpdate) -> Vec<PodUpdate> {
        self.seen.insert(update.source);
        // Names held by the other sources stay theirs.
        let mut names: HashMap<String, String> = self
            .sources
            .iter()
            .filter(|(s, _)| **s != update.source)
            .flat_map(|(_, m)| m.values())
            .map(|p| (full_name(p), origin(p).to_string()))
            .collect();
        let mut incoming: BTreeMap<String, Pod> = BTreeMap::new();
        for pod in update.pods {
            let name = full_name(&pod);
            if let Some(first) = names.get(&name) {
                tracing::error!(
                    pod = %name,
                    file = %origin(&pod),
                    first = %first,
                    field = "metadata.name",
                    "duplicate pod name, the later manifest is rejected"
                );
                continue;
            }
            if incoming.contains_key(uid_of(&pod)) {
                tracing::error!(
                    pod = %name,
                    file = %origin(&pod),
                    field = "metadata.uid",
                    uid = %uid_of(&pod),
                    "duplicate pod UID, the later pod is rejected"
                );
                continue;
            }
            names.insert(name, origin(&pod).to_string());
            incoming.insert(uid_of(&pod).to_string(), pod);
        }

        let old = self.sources.entry(update.source).or_default();
        let (mut adds, mut updates, mut removes, mut reconciles) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (uid, pod) in old.iter() {
            if !incoming.contains_key(uid) {
                removes.push(pod.clone());
            }
        }
        for (uid, pod) in &incoming {
            match old.get(uid) {
                None => adds.push(pod.clone()),
                Some(prev) if differ_semantically(prev, pod) => updates.push(pod.clone()),
                // resourceVersion, managedFields, status...: nothing for the runtime to do.
                Some(prev) if prev != pod => reconciles.push(pod.clone()),
                Some(_) => {}
            }
        }
        *old = incoming;
        let mut out = Vec::new();
        if !removes.is_empty() {
            out.push(PodUpdate::Remove(removes));
        }
        if !adds.is_empty() {
            out.push(PodUpdate::Add(adds));
        }
        if !updates.is_empty() {
            out.push(PodUpdate::Update(updates));
        }
        if !reconciles.is_empty() {
            out.push(PodUpdate::Reconcile(reconciles));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::load_manifest;

    fn pod(name: &str, cmd: &str, file: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: 'i:1', command: [{cmd}]}}]}}\n"
        );
        load_manifest(&text, Source::File, file, "n").0.remove(0)
    }

    fn snap(pods: Vec<Pod>) -> SourceUpdate {
        SourceUpdate {
            source: Source::File,
            pods,
        }
    }

    fn names(u: &PodUpdate) -> Vec<String> {
        let pods = match u {
            PodUpdate::Add(p)
            | PodUpdate::Update(p)
            | PodUpdate::Remove(p)
            | PodUpdate::Reconcile(p) => p,
        };
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn add_edit_remove() {
        let mut pc = PodConfig::new();
        assert!(!pc.sources_ready(&[Source::File]));
        let a = pod("a", "x", "/m/a");
        let b = pod("b", "x", "/m/b");
        let u = pc.merge(snap(vec![a.clone(), b.clone()]));
        assert!(pc.sources_ready(&[Source::File]));
        assert!(!pc.sources_ready(&[Source::File, Source::Http]));
        assert_eq!(u.len(), 1);
        assert!(matches!(&u[0], PodUpdate::Add(p) if p.len() == 2));
        // Same snapshot again: nothing.
        assert!(pc.merge(snap(vec![a.clone(), b.clone()])).is_empty());
        // Editing a changes its UID: the old one goes, the new one comes.
        let a2 = pod("a", "y", "/m/a");
        let u = pc.merge(snap(vec![a2.clone(), b.clone()]));
        assert_eq!(u.len(), 2);
        assert!(matches!(&u[0], PodUpdate::Remove(p) if uid_of(&p[0]) == uid_of(&a)));
        assert!(matches!(&u[1], PodUpdate::Add(p) if uid_of(&p[0]) == uid_of(&a2)));
        let u = pc.merge(snap(vec![b.clone()]));
        assert_eq!(names(&u[0]), ["a-n"]);
        assert!(matches!(&u[0], PodUpdate::Remove(_)));
        assert_eq!(pc.pods().count(), 1);
    }

    #[test]
    fn same_uid_with_new_spec_is_an_update_and_status_a_reconcile() {
        let mut pc = PodConfig::new();
        let a = pod("a", "x", "/m/a");
        pc.merge(snap(vec![a.clone()]));
        let mut a2 = a.clone();
        a2.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
        let u = pc.merge(snap(vec![a2.clone()]));
        assert!(matches!(&u[..], [PodUpdate::Update(_)]));
        let mut a3 = a2.clone();
        a3.status.as_mut().unwrap().phase = Some("Running".into());
        let u = pc.merge(snap(vec![a3.clone()]));
        assert!(matches!(&u[..], [PodUpdate::Reconcile(_)]));
        // A status write moves the resourceVersion: still a reconcile.
        let mut a4 = a3.clone();
        a4.metadata.resource_version = Some("42".into());
        assert!(matches!(
            &pc.merge(snap(vec![a4.clone()]))[..],
            [PodUpdate::Reconcile(_)]
        ));
        // A deletion timestamp is an update (the kubelet must terminate the pod).
        let mut a5 = a4.clone();
        a5.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            ));
        assert!(matches!(
            &pc.merge(snap(vec![a5]))[..],
            [PodUpdate::Update(_)]
        ));
    }

    #[test]
    fn duplicate_uids_keep_the_first() {
        let mut pc = PodConfig::new();
        let mut a = pod("a", "x", "/m/1.yaml");
        let mut b = pod("b", "x", "/m/2.yaml");
        a.metadata.uid = Some("same".into());
        b.metadata.uid = Some("same".into());
        let u = pc.merge(snap(vec![a, b]));
        assert!(
            matches!(&u[..], [PodUpdate::Add(p)] if p.len() == 1 && p[0].metadata.name.as_deref() == Some("a-n"))
        );
    }

    #[test]
    fn duplicate_names_keep_the_first() {
        let mut pc = PodConfig::new();
        let first = pod("a", "x", "/m/1.yaml");
        let second = pod("a", "y", "/m/2.yaml");
        let u = pc.merge(snap(vec![first.clone(), second]));
        assert!(
            matches!(&u[..], [PodUpdate::Add(p)] if p.len() == 1 && uid_of(&p[0]) == uid_of(&first))
        );
        // Another source cannot take the name either.
        let mut from_http = pod("a", "z", "/m/3.yaml");
        from_http.metadata.uid = Some("other".into());
        let u = pc.merge(SourceUpdate {
            source: Source::Http,
            pods: vec![from_http],
        });
        assert!(u.is_empty());
    }
}
