//! A pod's runtime state read from CRI (upstream `GetPodStatus` and
//! `getPodContainerStatuses`): sandboxes, containers, IPs and termination messages.

use std::path::Path;

use nodus_proto::runtime::v1 as cri;

use super::cri::CriError;
use super::*;
use crate::container::{ContainerState, ContainerStatus, PodStatus, SandboxState, SandboxStatus};
use crate::kuberuntime::labels;

impl RuntimeManager {
    /// The runtime's view of one pod, from CRI only.
    pub(crate) async fn get_pod_status(&self, uid: &str) -> Result<PodStatus, CriError> {
        let (sandboxes, containers) = tokio::try_join!(
            self.cri.list_pod_sandbox(uid_selector(uid)),
            self.cri.list_containers(uid_selector(uid)),
        )?;
        self.pod_status_from(uid, sandboxes, containers).await
    }

    /// The runtime's view of one pod from listed sandboxes and containers (already those
    /// of `uid`). Asks CRI only for what the lists lack and no earlier answer holds: a
    /// ready sandbox's IPs, a container whose state changed.
    pub(crate) async fn pod_status_from(
        &self,
        uid: &str,
        sandboxes: impl IntoIterator<Item = cri::PodSandbox>,
        containers: impl IntoIterator<Item = cri::Container>,
    ) -> Result<PodStatus, CriError> {
        let mut status = PodStatus {
            uid: uid.to_string(),
            ..Default::default()
        };
        for sb in sandboxes {
            let meta = sb.metadata.clone().unwrap_or_default();
            status.name = meta.name.clone();
            status.namespace = meta.namespace.clone();
            let state = sandbox_state(sb.state);
            let cached = lock(&self.sandbox_ips).get(&sb.id).cloned();
            let ips = match (cached, state) {
                (Some(ips), _) => ips,
                (None, SandboxState::Ready) => {
                    let st = self.cri.pod_sandbox_status(&sb.id).await?;
                    let net = st.network.unwrap_or_default();
                    let mut ips = Vec::new();
                    if !net.ip.is_empty() {
                        ips.push(net.ip);
                    }
                    ips.extend(net.additional_ips.into_iter().map(|p| p.ip));
                    lock(&self.sandbox_ips).insert(sb.id.clone(), ips.clone());
                    ips
                }
                (None, SandboxState::NotReady) => Vec::new(),
            };
            status.sandboxes.push(SandboxStatus {
                id: sb.id,
                state,
                attempt: meta.attempt,
                created_at: sb.created_at,
                ips,
            });
        }
        for c in containers {
            let state = container_state(c.state);
            let cached = lock(&self.container_cache)
                .get(&c.id)
                .filter(|s| s.state == state)
                .cloned();
            let cs = match cached {
                // A status the kubelet recorded itself lacks the runtime's creation time.
                Some(cs) => ContainerStatus {
                    created_at: c.created_at,
                    ..cs
                },
                None => match self.cri.container_status(&c.id).await {
                    Ok(st) => {
                        let cs = self.convert_container(&c, &st);
                        lock(&self.container_cache).insert(c.id.clone(), cs.clone());
                        cs
                    }
                    // Removed between the list and the status call.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                },
            };
            status.containers.push(cs);
        }
        self.fill_actuated(&mut status);
        status.sort();
        Ok(status)
    }

    /// Sets each container's `resources` to what the kubelet last applied to it. A status
    /// from the pod cache is refreshed with this before use: the PLEG rebuilds a pod's
    /// status only when a container changed state, and a resize changes none.
    pub(crate) fn fill_actuated(&self, status: &mut PodStatus) {
        for c in &mut status.containers {
            c.resources = self.allocation.actuated(&status.uid, &c.name);
        }
    }

    /// Records the status of a container the kubelet has just created or started, so the
    /// next relist does not ask the runtime for what the kubelet already knows: a created
    /// or running container's status holds nothing else but its startedAt (the moment
    /// StartContainer answered, at most a few milliseconds after the runtime's) and
    /// imageRef (the same rule as containerd's). A listed state that differs from the
    /// recorded one (the container exited) is asked for as before.
    pub(super) fn record_own_status(&self, listed: &cri::Container, st: &cri::ContainerStatus) {
        let cs = self.convert_container(listed, st);
        // A relist may have read the runtime already; its answer stays.
        lock(&self.container_cache)
            .entry(listed.id.clone())
            .and_modify(|e| {
                if e.state == ContainerState::Created && cs.state == ContainerState::Running {
                    *e = cs.clone();
                }
            })
            .or_insert(cs);
    }

    pub(super) fn convert_container(
        &self,
        c: &cri::Container,
        st: &cri::ContainerStatus,
    ) -> ContainerStatus {
        let meta = c.metadata.clone().unwrap_or_default();
        let state = container_state(st.state);
        let mut message = st.message.clone();
        if message.is_empty() && state == ContainerState::Exited {
            message = termination_message(c, st).unwrap_or_default();
        }
        ContainerStatus {
            id: c.id.clone(),
            name: c
                .labels
                .get(labels::CONTAINER_NAME_LABEL)
                .cloned()
                .unwrap_or(meta.name),
            sandbox_id: c.pod_sandbox_id.clone(),
            state,
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            reason: st.reason.clone(),
            message,
            image: c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_ref: st.image_ref.clone(),
            hash: c
                .annotations
                .get(labels::CONTAINER_HASH)
                .cloned()
                .unwrap_or_default(),
            restart_count: labels::restart_count(&c.annotations),
            resources: None,
            user: st.user.as_ref().and_then(|u| u.linux.as_ref()).map(|u| {
                k8s_openapi::api::core::v1::ContainerUser {
                    linux: Some(k8s_openapi::api::core::v1::LinuxContainerUser {
                        uid: u.uid,
                        gid: u.gid,
                        supplemental_groups: Some(u.supplemental_groups.clone())
                            .filter(|g| !g.is_empty()),
                    }),
                }
            }),
        }
    }

    pub(super) fn node_resolv_conf(&self) -> String {
        std::fs::read_to_string(&self.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(path = %self.resolv_conf.display(), error = %e, "cannot read resolv.conf, pods get no DNS servers");
            String::new()
        })
    }
}

/// Upstream's limit on a termination message.
const MAX_TERMINATION_MESSAGE: u64 = 4096;

/// What the container wrote to its `terminationMessagePath` (the file the kubelet mounted
/// there, found through the container's mounts), cut to 4096 bytes.
fn termination_message(c: &cri::Container, st: &cri::ContainerStatus) -> Option<String> {
    use std::io::Read;
    let path = c
        .annotations
        .get(labels::CONTAINER_TERMINATION_MESSAGE_PATH)?;
    let mount = st.mounts.iter().find(|m| &m.container_path == path)?;
    let mut buf = Vec::new();
    std::fs::File::open(&mount.host_path)
        .ok()?
        .take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut buf)
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    if !text.is_empty() {
        return Some(text);
    }
    // FallbackToLogsOnError: the end of the log of a failed container.
    let fallback = c
        .annotations
        .get(labels::CONTAINER_TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError");
    if fallback && st.exit_code != 0 && !st.log_path.is_empty() {
        let opts = crate::logs::LogOptions {
            tail_lines: Some(MAX_TERMINATION_MESSAGE_LOG_LINES),
            ..Default::default()
        };
        let (mut text, _) = crate::logs::read_all(Path::new(&st.log_path), &opts).ok()?;
        if text.len() > MAX_TERMINATION_MESSAGE_LOG_BYTES {
            let mut cut = text.len() - MAX_TERMINATION_MESSAGE_LOG_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        return (!text.is_empty()).then_some(text);
    }
    None
}

/// Upstream's limits on a termination message taken from the log.
const MAX_TERMINATION_MESSAGE_LOG_LINES: usize = 80;
const MAX_TERMINATION_MESSAGE_LOG_BYTES: usize = 2048;
