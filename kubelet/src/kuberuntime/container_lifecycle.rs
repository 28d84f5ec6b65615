//! One container's life (upstream `kuberuntime_container.go`): start (image, config,
//! create, start, postStart) and stop (preStop within the grace period, then the signal).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

use super::cri::CriError;
use super::*;
use crate::backoff::{self, Backoff};
use crate::container::{now_nanos, PodStatus};
use crate::kuberuntime::labels;
use crate::pod_util::{app_containers, init_containers};

impl RuntimeManager {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_container(
        &self,
        pod: &Pod,
        container: &Container,
        is_init: bool,
        pid_target: Option<&str>,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        status: &PodStatus,
        backoff: &Mutex<Backoff>,
        objects: &crate::objects::PodObjects,
    ) -> Result<(), SyncError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let previous = status.find_container(&container.name);
        let restart_count = previous.map(|p| p.restart_count + 1).unwrap_or(0);
        if let Some(last) = status.last_exited(&container.name) {
            let key = backoff::key(&uid, &container.name, &labels::hash_container(container));
            lock(backoff).next(&key, last.started_at, last.finished_at, now_nanos());
        }
        let image = self
            .ensure_image(pod, container, sandbox_config, objects)
            .await?;
        let image_ref = image.id;
        let user = container::effective_user(pod, container);
        if user.run_as_non_root {
            self.verify_non_root(pod, container, &user, &image_ref)
                .await?;
        }
        let rt_fields = crate::envvars::RuntimeFields {
            pod_ips: self.pod_ips(Some(pod), sandbox_id).await,
            host_ip: self.node_ips.first().cloned(),
            node_name: self.node_name.clone(),
        };
        let env = crate::envvars::make_env(pod, container, &rt_fields, &self.node, objects)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let command_args = crate::envvars::expand_command(container, &env);
        let resources = crate::resources::linux_container_resources(pod, container, &self.node)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let inputs = crate::volumes::VolumeInputs {
            rt: &rt_fields,
            node: &self.node,
            objects,
        };
        let volumes = crate::volumes::prepare(&self.root_dir, pod, &inputs)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let log_dir = PathBuf::from(&sandbox_config.log_directory).join(&container.name);
        mkdir(&log_dir)?;
        let sub_paths = crate::volumes::sub_paths_dir(&self.root_dir, &uid);
        let mut mounts = crate::volumes::container_mounts(container, &volumes, &sub_paths, &env)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        if let Some(path) = container
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            let dir = self
                .root_dir
                .join("pods")
                .join(&uid)
                .join("containers")
                .join(&container.name);
            mkdir(&dir)?;
            let file = dir.join(restart_count.to_string());
            // 0666 whatever the umask, as upstream: a container running as any user writes it.
            std::fs::write(&file, b"")
                .and_then(|()| {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
                })
                .map_err(|source| SyncError::Io {
                    path: file.clone(),
                    source,
                })?;
            mounts.push(cri::Mount {
                container_path: path.to_string(),
                host_path: file.display().to_string(),
                ..Default::default()
            });
        }
        if crate::network::hosts::should_mount(container, &rt_fields.pod_ips) {
            let pod_dir = self.root_dir.join("pods").join(&uid);
            let file = crate::network::hosts::ensure_file(
                &pod_dir,
                pod,
                &rt_fields.pod_ips,
                &self.paths.dns.domain,
                Path::new(crate::network::hosts::ETC_HOSTS),
            )
            .map_err(|source| SyncError::Io {
                path: pod_dir.join("etc-hosts"),
                source,
            })?;
            mounts.push(cri::Mount {
                container_path: crate::network::hosts::ETC_HOSTS.into(),
                host_path: file.display().to_string(),
                ..Default::default()
            });
        }
        let config = container::container_config(
            pod,
            container,
            &container::ContainerOptions {
                restart_count,
                is_init,
                image_ref,
                mounts,
                env: Some(env),
                command_args: Some(command_args),
                resources: Some(resources),
                namespace_options: sandbox_config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone())
                    .map(|mut ns| {
                        // An ephemeral container shares its target's processes.
                        if let Some(id) = pid_target {
                            ns.pid = cri::NamespaceMode::Target as i32;
                            ns.target_id = id.to_string();
                        }
                        ns
                    }),
                seccomp: Some(crate::security::seccomp::profile_for(
                    pod,
                    Some(container),
                    &self.paths.seccomp_profile_root,
                    self.paths.seccomp_default,
                )),
                apparmor: crate::security::apparmor::profile_for(pod, container)
                    .map_err(|e| SyncError::Config(e.to_string()))?,
            },
        );
        // What the next relist would otherwise ask ContainerStatus for, known from here.
        let listed = cri::Container {
            pod_sandbox_id: sandbox_id.to_string(),
            metadata: config.metadata.clone(),
            image: config.image.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            ..Default::default()
        };
        let id = self
            .cri
            .create_container(sandbox_id, config, sandbox_config.clone())
            .await
            .map_err(SyncError::CreateContainer)?;
        let listed = cri::Container {
            id: id.clone(),
            ..listed
        };
        let own_status = image.status_ref.map(|image_ref| cri::ContainerStatus {
            state: cri::ContainerState::ContainerCreated as i32,
            image_ref,
            ..Default::default()
        });
        if let Some(st) = &own_status {
            self.record_own_status(&listed, st);
        }
        self.events.pod_event(
            pod,
            Some(&container.name),
            crate::events::NORMAL,
            "Created",
            format!("Created container {}", container.name),
        );
        if let Err(e) = self.cri.start_container(&id).await {
            // Do not leave a created container behind; the next sync tries again.
            let _ = self.cri.remove_container(&id).await;
            lock(&self.container_cache).remove(&id);
            return Err(SyncError::StartContainer(e));
        }
        self.allocation
            .set_actuated(&uid, &container.name, container.resources.as_ref());
        if let Some(st) = own_status {
            // Running since at most now: the runtime stamped its startedAt before answering.
            let st = cri::ContainerStatus {
                state: cri::ContainerState::ContainerRunning as i32,
                started_at: now_nanos(),
                ..st
            };
            self.record_own_status(&listed, &st);
        }
        tracing::info!(pod = %crate::pod_util::full_name(pod), container = %container.name, id = %id, restart_count, init = is_init, "container started");
        self.events.pod_event(
            pod,
            Some(&container.name),
            crate::events::NORMAL,
            "Started",
            format!("Started container {}", container.name),
        );
        if let Some(h) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let ip = rt_fields.pod_ips.first().map(String::as_str);
            let timeout = std::time::Duration::from_secs(pod_grace(pod).max(30) as u64);
            if let Err(msg) = run_lifecycle_handler(&self.cri, h, container, &id, ip, timeout).await
            {
                tracing::warn!(pod = %crate::pod_util::full_name(pod), container = %container.name, error = %msg, "postStart hook failed, killing the container (FailedPostStartHook)");
                let _ = self.cri.stop_container(&id, pod_grace(pod)).await;
                return Err(SyncError::PostStartHook(msg.to_string()));
            }
        }
        Ok(())
    }

    /// Stops one container: its preStop hook (when `pod` knows one) within the grace
    /// period, then the stop signal with what is left of it. `reason` is the `Killing`
    /// event's message (default: "Stopping container <name>").
    pub(crate) async fn stop_container(
        &self,
        pod: Option<&Pod>,
        name: &str,
        id: &str,
        sandbox_id: &str,
        grace: i64,
        reason: Option<&str>,
    ) -> Result<(), CriError> {
        let spec = pod.and_then(|p| {
            app_containers(p)
                .iter()
                .chain(init_containers(p))
                .find(|c| c.name == name)
        });
        let mut grace = grace;
        if let Some(p) = pod {
            self.events.pod_event(
                p,
                Some(name),
                crate::events::NORMAL,
                "Killing",
                reason
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("Stopping container {name}")),
            );
        }
        if let Some((c, h)) = spec.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
        {
            let ip = self.pod_ips(pod, sandbox_id).await;
            let start = std::time::Instant::now();
            run_pre_stop(&self.cri, h, c, id, ip.first().map(String::as_str), grace).await;
            grace = (grace - start.elapsed().as_secs() as i64).max(MIN_GRACE_SECS);
        }
        self.cri.stop_container(id, grace).await
    }

    /// Upstream's `verifyRunAsNonRoot`: refuses a container that would run as root.
    pub(super) async fn verify_non_root(
        &self,
        pod: &Pod,
        container: &Container,
        user: &container::EffectiveUser,
        image_ref: &str,
    ) -> Result<(), SyncError> {
        let who = format!(
            "pod: {:?}, container: {}",
            crate::pod_util::full_name(pod),
            container.name
        );
        if let Some(uid) = user.run_as_user {
            if uid == 0 {
                return Err(SyncError::Config(format!(
                    "container's runAsUser breaks non-root policy ({who})"
                )));
            }
            return Ok(());
        }
        let (uid, username) = self.cri.image_user(image_ref).await?;
        match uid {
            Some(0) => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image will run as root ({who})"
            ))),
            Some(_) => Ok(()),
            None if !username.is_empty() => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image has non-numeric user ({username}), cannot verify user is non-root ({who})"
            ))),
            // No user in the image: it runs as root.
            None => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image will run as root ({who})"
            ))),
        }
    }
}
