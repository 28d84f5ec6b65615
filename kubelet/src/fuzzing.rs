//! Entry points of the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! `cargo fuzz` sets): each feeds raw bytes to the parsers that take input from outside the
//! node agent, and to the code that consumes what they accept. Results are ignored; a panic
//! is the finding.

use crate::container::PodStatus;
use crate::sources::{load_manifest, Source};

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A pod manifest as the file and http sources read it (YAML or JSON, one or many
/// documents, a `List`), then what a sync derives from an accepted pod.
pub fn manifest(data: &[u8]) {
    let (pods, _) = load_manifest(&text(data), Source::File, "/fuzz/pod.yaml", "node");
    for pod in &pods {
        let _ = crate::sources::validate(pod);
        let _ = crate::resources::pod_qos(pod);
        let _ = crate::resources::pod_cgroup_config(pod);
        for c in crate::pod_util::all_containers(pod) {
            let _ = crate::resources::container_resources(c);
        }
        let status = PodStatus::default();
        let backoff = crate::backoff::Backoff::new();
        let _ = crate::kuberuntime::actions::compute_pod_actions(
            pod,
            &status,
            &Default::default(),
            &backoff,
            1,
        );
        let _ = crate::status_manager::generate(pod, &status, &Default::default());
        let _ = crate::pod_util::ephemeral_containers(pod);
    }
}

/// A KubeletConfiguration file; its first line holds kubelet flags (space separated).
pub fn kubelet_config(data: &[u8]) {
    let text = text(data);
    let (flags, file) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(file) =
        crate::config::KubeletConfiguration::parse(std::path::Path::new("/fuzz/config"), file)
    else {
        return;
    };
    let args = std::iter::once("kubelet").chain(flags.split(' ').filter(|a| !a.is_empty()));
    if let Ok(flags) = <crate::config::Flags as clap::Parser>::try_parse_from(args) {
        let _ = crate::config::Config::resolve(&flags, &file);
    }
}

/// Quantities, durations and URLs as configuration and manifests write them.
pub fn values(data: &[u8]) {
    let text = text(data);
    let _ = crate::resources::parse_milli(&text);
    let _ = crate::duration::parse(&text);
    let _ = crate::sources::http::parse_url(&text);
    let _ = crate::network::dns::parse_resolv_conf(&text);
}

/// The query strings of the kubelet API's logs, exec, attach and port-forward requests.
pub fn kubelet_api_query(data: &[u8]) {
    let text = text(data);
    let _ = crate::logs::LogOptions::from_query(&text);
    for kind in [
        crate::server::streaming::Kind::Exec,
        crate::server::streaming::Kind::Attach,
        crate::server::streaming::Kind::PortForward,
    ] {
        let _ = crate::server::streaming::StreamOptions::from_query(kind, &text);
    }
}

/// A container log file in the CRI format, read and rendered as `kubectl logs` gets it.
pub fn cri_log(data: &[u8]) {
    let text = text(data);
    for at_end in [false, true] {
        let (lines, _) = crate::logs::parse(&text, at_end);
        let _ = crate::logs::render(&lines, true);
    }
}
