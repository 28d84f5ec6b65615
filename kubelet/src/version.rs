//! The version this kubelet reports (Node `kubeletVersion`, the user agent) and the
//! architecture name as Go spells it.

/// The version this kubelet reports (nodeInfo.kubeletVersion): the Kubernetes API it is
/// built against, marked as ours.
pub const KUBELET_VERSION: &str = concat!("v1.34.0-nodus.", env!("CARGO_PKG_VERSION"));

/// The architecture as Go (and so Kubernetes) names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
