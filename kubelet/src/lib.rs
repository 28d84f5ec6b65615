//! Nodus kubelet: a Kubernetes node agent running pods through a CRI runtime (containerd):
//! static pods from a manifest directory or URL, and with `--kubeconfig` the pods the API
//! server binds to the node (API-server mode: node registration, lease, status, mirror pods,
//! events, configMap/secret/token volumes).
//!
//! Data flow (see `DESIGN.md`): [`sources`] -> [`pod_config`] -> [`kubelet`]'s sync loop
//! (with [`pleg`] events and ticks) -> [`pod_workers`] -> [`kuberuntime`] (CRI calls
//! through [`cri`]) -> [`status_manager`], served by [`server`].

pub(crate) mod active_deadline;
mod admission;
pub(crate) mod allocation_manager;

pub(crate) mod backoff;
pub mod certificate;
pub mod cgroup_manager;
pub mod config;
pub(crate) mod container;
pub(crate) mod credentials;
pub(crate) mod duration;
pub(crate) mod envvars;
pub(crate) mod events;
#[cfg(fuzzing)]
pub mod fuzzing;
pub(crate) mod images;
pub(crate) mod insecure_tls;
pub mod kubeclient;
pub mod kubelet;
pub(crate) mod kuberuntime;
pub mod logs;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod network;
pub(crate) mod nodelease;
pub(crate) mod nodestatus;
pub(crate) mod objects;
pub(crate) mod pleg;
pub(crate) mod pod_cache;
pub(crate) mod pod_config;
pub(crate) mod pod_manager;
mod pod_sync;
pub(crate) mod pod_util;
pub(crate) mod pod_workers;
pub(crate) mod prober;
pub(crate) mod qos_container_manager;
pub mod resources;
pub(crate) mod security;
pub mod server;
pub(crate) mod services;
pub(crate) mod sources;
pub(crate) mod stats;
pub(crate) mod status_manager;
mod sync_loop;
#[cfg(test)]
mod testutil;
pub(crate) mod userns_manager;
pub mod version;
pub(crate) mod volumes;
