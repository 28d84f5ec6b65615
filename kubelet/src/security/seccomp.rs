//! The seccomp profile of a container or sandbox (upstream `getSeccompProfile`): the
//! container's `securityContext.seccompProfile`, else the pod's, else `RuntimeDefault` when
//! `seccompDefault` is on and `Unconfined` otherwise. A `Localhost` profile names a file
//! relative to `<root-dir>/seccomp`; a missing file makes the runtime refuse the container
//! (CreateContainerError), as upstream.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use nodus_proto::runtime::v1 as cri;

fn profile(
    kind: cri::security_profile::ProfileType,
    localhost_ref: String,
) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref,
    }
}

fn from_field(p: &SeccompProfile, root: &Path) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match p.type_.as_str() {
        "RuntimeDefault" => profile(ProfileType::RuntimeDefault, String::new()),
        "Localhost" => match p.localhost_profile.as_deref().filter(|s| !s.is_empty()) {
            Some(name) => profile(
                ProfileType::Localhost,
                root.join(name).display().to_string(),
            ),
            None => profile(ProfileType::Unconfined, String::new()),
        },
        _ => profile(ProfileType::Unconfined, String::new()),
    }
}

/// The profile for `container` (None: the sandbox's own, from the pod's field).
pub(crate) fn profile_for(
    pod: &Pod,
    container: Option<&Container>,
    profile_root: &Path,
    seccomp_default: bool,
) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    let field = container
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.seccomp_profile.as_ref())
        });
    match field {
        Some(p) => from_field(p, profile_root),
        None if seccomp_default => profile(ProfileType::RuntimeDefault, String::new()),
        None => profile(ProfileType::Unconfined, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri::security_profile::ProfileType;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn container_field_wins_over_pod_field_and_default() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {"name": "a"},
                    {"name": "b", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}}},
                    {"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}
                ]
            }
        }));
        let root = Path::new("/var/lib/kubelet/seccomp");
        let cs = &p.spec.as_ref().unwrap().containers;
        let a = profile_for(&p, Some(&cs[0]), root, false);
        assert_eq!(a.profile_type, ProfileType::RuntimeDefault as i32);
        let b = profile_for(&p, Some(&cs[1]), root, false);
        assert_eq!(b.profile_type, ProfileType::Localhost as i32);
        assert_eq!(
            b.localhost_ref,
            "/var/lib/kubelet/seccomp/profiles/audit.json"
        );
        let c = profile_for(&p, Some(&cs[2]), root, true);
        assert_eq!(c.profile_type, ProfileType::Unconfined as i32);
        let sandbox = profile_for(&p, None, root, false);
        assert_eq!(sandbox.profile_type, ProfileType::RuntimeDefault as i32);
    }

    #[test]
    fn nothing_set_is_unconfined_unless_seccomp_default() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        let root = Path::new("/r");
        assert_eq!(
            profile_for(&p, Some(c), root, false).profile_type,
            ProfileType::Unconfined as i32
        );
        assert_eq!(
            profile_for(&p, Some(c), root, true).profile_type,
            ProfileType::RuntimeDefault as i32
        );
    }
}
