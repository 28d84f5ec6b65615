//! AppArmor profiles (upstream `pkg/security/apparmor` and `getAppArmorProfile`): the
//! container's `securityContext.appArmorProfile`, else the legacy annotation
//! `container.apparmor.security.beta.kubernetes.io/<container>`, else the pod's field. The
//! runtime gets it in CRI's `apparmor` field and, for runtimes of CRI before 1.30, the
//! deprecated `apparmor_profile` string. A pod that asks for a profile other than
//! `Unconfined` on a host without AppArmor is refused at admission, as upstream refuses it.

use std::path::Path;

use k8s_openapi::api::core::v1::{AppArmorProfile, Container, Pod};
use nodus_proto::runtime::v1 as cri;

/// Prefix of the per-container annotation (before 1.30).
pub(crate) const ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Where the kernel says whether AppArmor is on.
pub(crate) const ENABLED_PARAMETER: &str = "/sys/module/apparmor/parameters/enabled";

/// A profile choice: `(type, localhost profile name)`.
type Choice = (String, Option<String>);

fn from_annotation(value: &str) -> Choice {
    match value {
        "runtime/default" => ("RuntimeDefault".into(), None),
        "unconfined" => ("Unconfined".into(), None),
        v => match v.strip_prefix("localhost/") {
            Some(name) => ("Localhost".into(), Some(name.to_string())),
            None => (v.to_string(), None),
        },
    }
}

fn from_field(p: &AppArmorProfile) -> Choice {
    (p.type_.clone(), p.localhost_profile.clone())
}

/// The profile `container` asks for, if any.
fn choice(pod: &Pod, container: &Container) -> Option<Choice> {
    if let Some(p) = container
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
    {
        return Some(from_field(p));
    }
    let key = format!("{ANNOTATION_PREFIX}{}", container.name);
    if let Some(v) = pod.metadata.annotations.as_ref().and_then(|a| a.get(&key)) {
        return Some(from_annotation(v));
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.app_armor_profile.as_ref())
        .map(from_field)
}

/// A container's AppArmor profile that cannot be expressed in CRI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AppArmorError {
    #[error("container {container:?}: missing localhost apparmor profile name")]
    MissingLocalhostName { container: String },
    #[error("container {container:?}: unknown apparmor profile type {profile_type:?}")]
    UnknownType {
        container: String,
        profile_type: String,
    },
}

/// The CRI profile and the deprecated string for `container` (None: nothing asked; the
/// runtime applies its default). Err names a profile that cannot be expressed.
pub(crate) fn profile_for(
    pod: &Pod,
    container: &Container,
) -> Result<Option<(cri::SecurityProfile, String)>, AppArmorError> {
    use cri::security_profile::ProfileType;
    let Some((kind, name)) = choice(pod, container) else {
        return Ok(None);
    };
    let (profile_type, localhost_ref, legacy) = match kind.as_str() {
        "RuntimeDefault" => (
            ProfileType::RuntimeDefault,
            String::new(),
            "runtime/default".to_string(),
        ),
        "Unconfined" => (
            ProfileType::Unconfined,
            String::new(),
            "unconfined".to_string(),
        ),
        "Localhost" => {
            let name = name.filter(|n| !n.is_empty()).ok_or_else(|| {
                AppArmorError::MissingLocalhostName {
                    container: container.name.clone(),
                }
            })?;
            (
                ProfileType::Localhost,
                name.clone(),
                format!("localhost/{name}"),
            )
        }
        other => {
            return Err(AppArmorError::UnknownType {
                container: container.name.clone(),
                profile_type: other.to_string(),
            })
        }
    };
    Ok(Some((
        cri::SecurityProfile {
            profile_type: profile_type as i32,
            localhost_ref,
        },
        legacy,
    )))
}

/// Whether any container of the pod needs AppArmor enforced (a profile other than
/// Unconfined).
pub(crate) fn is_required(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter_map(|c| choice(pod, c))
        .any(|(kind, _)| kind != "Unconfined")
}

/// Whether the host enforces AppArmor (the kernel parameter says `Y`).
pub(crate) fn host_enabled(parameter: &Path) -> bool {
    std::fs::read_to_string(parameter).is_ok_and(|v| v.trim() == "Y")
}

/// Upstream's admission check: Err((reason, message)) for a pod that asks for a profile on
/// a host without AppArmor.
pub(crate) fn admit(pod: &Pod, host_enabled: bool) -> Result<(), (String, String)> {
    if !is_required(pod) || host_enabled {
        return Ok(());
    }
    Err((
        "AppArmor".into(),
        "Cannot enforce AppArmor: AppArmor is not enabled on the host".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri::security_profile::ProfileType;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn field_annotation_and_pod_in_upstream_order() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "annotations": {
                "container.apparmor.security.beta.kubernetes.io/b": "localhost/k8s-deny-write",
                "container.apparmor.security.beta.kubernetes.io/a": "unconfined"
            }},
            "spec": {
                "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {"name": "a", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "mine"}}},
                    {"name": "b"},
                    {"name": "c"}
                ]
            }
        }));
        let cs = &p.spec.as_ref().unwrap().containers;
        let (a, legacy) = profile_for(&p, &cs[0]).unwrap().unwrap();
        assert_eq!(a.profile_type, ProfileType::Localhost as i32);
        assert_eq!(
            (a.localhost_ref.as_str(), legacy.as_str()),
            ("mine", "localhost/mine")
        );
        let (b, _) = profile_for(&p, &cs[1]).unwrap().unwrap();
        assert_eq!(b.localhost_ref, "k8s-deny-write");
        let (c, legacy) = profile_for(&p, &cs[2]).unwrap().unwrap();
        assert_eq!(c.profile_type, ProfileType::RuntimeDefault as i32);
        assert_eq!(legacy, "runtime/default");
    }

    #[test]
    fn admission_refuses_a_profile_without_apparmor_on_the_host() {
        let asks = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}]}}),
        );
        let (reason, message) = admit(&asks, false).unwrap_err();
        assert_eq!(reason, "AppArmor");
        assert_eq!(
            message,
            "Cannot enforce AppArmor: AppArmor is not enabled on the host"
        );
        assert!(admit(&asks, true).is_ok());
        let unconfined = pod(
            serde_json::json!({"metadata": {"name": "p", "annotations": {
            "container.apparmor.security.beta.kubernetes.io/a": "unconfined"}},
            "spec": {"containers": [{"name": "a"}]}}),
        );
        assert!(admit(&unconfined, false).is_ok());
        let nothing = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
        );
        assert!(admit(&nothing, false).is_ok());
    }

    #[test]
    fn bad_profiles_name_the_container() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "securityContext": {"appArmorProfile": {"type": "Localhost"}}},
            {"name": "b", "securityContext": {"appArmorProfile": {"type": "Strict"}}}]}}),
        );
        let cs = &p.spec.as_ref().unwrap().containers;
        let e = profile_for(&p, &cs[0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"a\": missing localhost apparmor profile name"
        );
        let e = profile_for(&p, &cs[1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"b\": unknown apparmor profile type \"Strict\""
        );
    }
}
