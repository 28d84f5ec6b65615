//! Nodus kubelet: a Kubernetes node agent in standalone mode, running static pods from a
//! manifest directory or URL through a CRI runtime (containerd).
//!
//! Data flow (see `DESIGN.md`): [`sources`] -> [`pod_config`] -> [`kubelet`]'s sync loop
//! (with [`pleg`] events and ticks) -> [`pod_workers`] -> [`kuberuntime`] (CRI calls
//! through [`cri`]) -> [`status_manager`], served by [`server`].

pub mod backoff;
pub mod config;
pub mod container;
pub mod cri;
pub mod duration;
pub mod envvars;
pub mod handlers;
pub mod images;
pub mod kubelet;
pub mod kuberuntime;
pub mod labels;
pub mod logs;
pub mod metrics;
pub mod pleg;
pub mod pod_config;
pub mod pod_workers;
pub mod prober;
pub mod resources;
pub mod server;
pub mod sources;
pub mod stats;
pub mod status_manager;
#[cfg(test)]
mod testutil;
pub mod volumes;
