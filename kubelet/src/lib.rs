//! Nodus kubelet: a Kubernetes node agent running pods through a CRI runtime (containerd):
//! static pods from a manifest directory or URL, and with `--kubeconfig` the pods the API
//! server binds to the node (API-server mode: node registration, lease, status, mirror pods,
//! events, configMap/secret/token volumes).
//!
//! Data flow (see `DESIGN.md`): [`sources`] -> [`pod_config`] -> [`kubelet`]'s sync loop
//! (with [`pleg`] events and ticks) -> [`pod_workers`] -> [`kuberuntime`] (CRI calls
//! through [`cri`]) -> [`status_manager`], served by [`server`].

pub mod active_deadline;
mod admission;

pub mod backoff;
pub mod config;
pub mod container;
pub mod credentials;
pub mod duration;
pub mod envvars;
pub mod events;
pub mod images;
pub(crate) mod insecure_tls;
pub mod kubeclient;
pub mod kubelet;
pub mod kuberuntime;
pub mod logs;
pub mod metrics;
pub mod mirror;
pub mod network;
pub mod nodelease;
pub mod nodestatus;
pub mod objects;
pub mod pleg;
pub(crate) mod pod_cache;
pub mod pod_config;
pub mod pod_manager;
mod pod_sync;
pub(crate) mod pod_util;
pub mod pod_workers;
pub mod prober;
pub mod resources;
pub mod security;
pub mod server;
pub mod services;
pub mod sources;
pub mod stats;
pub mod status_manager;
mod sync_loop;
#[cfg(test)]
mod testutil;
pub mod version;
pub mod volumes;
