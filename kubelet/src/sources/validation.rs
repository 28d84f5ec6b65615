//! Upstream's pod validation (`pkg/apis/core/validation`, run by the kubelet's config
//! sources on static pods as `filterInvalidPods`), for what this kubelet relies on: names,
//! restart and pull policies, ports, namespaces with `hostUsers`, grace periods, volumes
//! and their mounts (`subPath` stays inside its volume), resource quantities and the size
//! of annotations. Each problem comes back as (field path, reason), in upstream's words.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Validates what this kubelet relies on; returns (field, reason) on the first problem.
pub(crate) fn validate(pod: &Pod) -> Result<(), (String, String)> {
    let bad = |f: &str, r: String| Err((f.to_string(), r));
    match pod.metadata.name.as_deref() {
        None | Some("") => return bad("metadata.name", "required value".into()),
        Some(n) if !is_dns_subdomain(n) => {
            return bad(
                "metadata.name",
                format!("invalid value {n:?}: must be a lowercase RFC 1123 subdomain"),
            )
        }
        _ => {}
    }
    if let Some(ns) = pod.metadata.namespace.as_deref() {
        if !is_dns_label(ns) {
            return bad(
                "metadata.namespace",
                format!("invalid value {ns:?}: must be a lowercase RFC 1123 label"),
            );
        }
    }
    let Some(spec) = &pod.spec else {
        return bad("spec", "required value".into());
    };
    if spec.containers.is_empty() {
        return bad(
            "spec.containers",
            "required value: at least one container".into(),
        );
    }
    if let Some(p) = spec.restart_policy.as_deref() {
        if !matches!(p, "Always" | "OnFailure" | "Never") {
            return bad(
                "spec.restartPolicy",
                format!("unsupported value {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            );
        }
    }
    // Upstream's validateHostUsers: a user namespace does not go with the host's others.
    if spec.host_users == Some(false) {
        for (field, host) in [
            ("spec.hostNetwork", spec.host_network),
            ("spec.HostPID", spec.host_pid),
            ("spec.HostIPC", spec.host_ipc),
        ] {
            if host == Some(true) {
                return bad(field, "forbidden: when `hostUsers` is false".into());
            }
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            return bad(
                "spec.terminationGracePeriodSeconds",
                format!("invalid value {g}: must be >= 0"),
            );
        }
    }
    validate_metadata(pod)?;
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("spec.volumes[{i}]");
        if !is_dns_label(&v.name) {
            return bad(
                &format!("{at}.name"),
                format!(
                    "invalid value {:?}: must be a lowercase RFC 1123 label",
                    v.name
                ),
            );
        }
        if !volumes.insert(v.name.as_str()) {
            return bad(
                &format!("{at}.name"),
                format!("duplicate value {:?}", v.name),
            );
        }
        if let Some(h) = &v.host_path {
            if h.path.is_empty() {
                return bad(&format!("{at}.hostPath.path"), "required value".into());
            }
            if has_backsteps(&h.path) {
                return bad(
                    &format!("{at}.hostPath.path"),
                    format!("invalid value {:?}: must not contain '..'", h.path),
                );
            }
        }
    }
    let mut names = HashSet::new();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("spec.initContainers", c));
    let app = spec.containers.iter().map(|c| ("spec.containers", c));
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (list, c) in init.chain(app) {
        let i = index.entry(list).or_default();
        let at = format!("{list}[{i}]");
        *i += 1;
        if !is_dns_label(&c.name) {
            return bad(
                &format!("{at}.name"),
                if c.name.is_empty() {
                    "required value".into()
                } else {
                    format!(
                        "invalid value {:?}: must be a lowercase RFC 1123 label",
                        c.name
                    )
                },
            );
        }
        if !names.insert(c.name.as_str()) {
            return bad(
                &format!("{at}.name"),
                format!("duplicate value {:?}", c.name),
            );
        }
        match c.image.as_deref() {
            None | Some("") => return bad(&format!("{at}.image"), "required value".into()),
            Some(img) if img.trim() != img => {
                return bad(
                    &format!("{at}.image"),
                    format!("invalid value {img:?}: leading or trailing whitespace"),
                )
            }
            _ => {}
        }
        if let Some(p) = c.image_pull_policy.as_deref() {
            if !matches!(p, "Always" | "IfNotPresent" | "Never") {
                return bad(
                    &format!("{at}.imagePullPolicy"),
                    format!("unsupported value {p:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""),
                );
            }
        }
        validate_volume_mounts(&at, c, &volumes)?;
        validate_resources(&at, c)?;
        for (j, port) in c.ports.iter().flatten().enumerate() {
            if !(1..=65535).contains(&port.container_port) {
                return bad(
                    &format!("{at}.ports[{j}].containerPort"),
                    format!(
                        "invalid value {}: must be between 1 and 65535",
                        port.container_port
                    ),
                );
            }
            if let Some(hp) = port.host_port {
                if !(0..=65535).contains(&hp) {
                    return bad(
                        &format!("{at}.ports[{j}].hostPort"),
                        format!("invalid value {hp}: must be between 0 and 65535"),
                    );
                }
            }
            if let Some(p) = port.protocol.as_deref() {
                if !matches!(p, "TCP" | "UDP" | "SCTP") {
                    return bad(
                        &format!("{at}.ports[{j}].protocol"),
                        format!(
                            "unsupported value {p:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

type Invalid = (String, String);

/// Upstream's `ValidateAnnotations` (all keys and values together at most 256 KiB) and
/// label values (at most 63 characters).
fn validate_metadata(pod: &Pod) -> Result<(), Invalid> {
    const MAX_ANNOTATIONS: usize = 256 * 1024;
    let size: usize = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if size > MAX_ANNOTATIONS {
        return Err((
            "metadata.annotations".into(),
            format!("too long: must have at most {MAX_ANNOTATIONS} bytes (has {size})"),
        ));
    }
    for (k, v) in pod.metadata.labels.iter().flatten() {
        if v.len() > 63 {
            return Err((
                format!("metadata.labels[{k}]"),
                format!(
                    "invalid value of {} bytes: must be no more than 63 characters",
                    v.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A path with a `..` component (upstream's `validatePathNoBacksteps`).
fn has_backsteps(p: &str) -> bool {
    p.split('/').any(|c| c == "..")
}

/// Upstream's `ValidateVolumeMounts`: the volume exists, the mount path is given, and
/// `subPath`/`subPathExpr` (not both) are relative and without `..`
/// (`validateLocalDescendingPath`).
fn validate_volume_mounts(at: &str, c: &Container, volumes: &HashSet<&str>) -> Result<(), Invalid> {
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let at = format!("{at}.volumeMounts[{j}]");
        if !volumes.contains(m.name.as_str()) {
            return Err((format!("{at}.name"), format!("not found: {:?}", m.name)));
        }
        if m.mount_path.is_empty() {
            return Err((format!("{at}.mountPath"), "required value".into()));
        }
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
            && m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err((
                format!("{at}.subPathExpr"),
                "invalid value: subPathExpr and subPath are mutually exclusive".into(),
            ));
        }
        for (field, p) in [("subPath", &m.sub_path), ("subPathExpr", &m.sub_path_expr)] {
            let Some(p) = p.as_deref() else { continue };
            if p.starts_with('/') {
                return Err((
                    format!("{at}.{field}"),
                    format!("invalid value {p:?}: must be a relative path"),
                ));
            }
            if has_backsteps(p) {
                return Err((
                    format!("{at}.{field}"),
                    format!("invalid value {p:?}: must not contain '..'"),
                ));
            }
        }
    }
    Ok(())
}

/// Upstream's `ValidateResourceRequirements`: every quantity parses and is not negative,
/// and a request is not above its limit.
fn validate_resources(at: &str, c: &Container) -> Result<(), Invalid> {
    let Some(r) = &c.resources else {
        return Ok(());
    };
    type Quantities = Option<BTreeMap<String, Quantity>>;
    fn parse<'a>(
        at: &str,
        kind: &str,
        map: &'a Quantities,
    ) -> Result<BTreeMap<&'a str, (i128, &'a str)>, Invalid> {
        let mut out = BTreeMap::new();
        for (k, q) in map.iter().flatten() {
            let field = format!("{at}.resources.{kind}.{k}");
            let v = crate::resources::parse_milli(&q.0).map_err(|_| {
                (
                    field.clone(),
                    format!(
                        "invalid value {:?}: quantities must match the regular expression \
                         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                        q.0
                    ),
                )
            })?;
            if v < 0 {
                return Err((
                    field,
                    format!(
                        "invalid value {:?}: must be greater than or equal to 0",
                        q.0
                    ),
                ));
            }
            out.insert(k.as_str(), (v, q.0.as_str()));
        }
        Ok(out)
    }
    let limits = parse(at, "limits", &r.limits)?;
    let requests = parse(at, "requests", &r.requests)?;
    for (k, (req, text)) in &requests {
        if let Some((lim, _)) = limits.get(k) {
            if req > lim {
                return Err((
                    format!("{at}.resources.requests"),
                    format!("invalid value {text:?}: must be less than or equal to {k} limit"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid pod with a hostPath volume `v` mounted by container `c`, with `spec` lines
    /// and `container` lines added.
    fn pod(spec: &str, container: &str) -> Pod {
        let text = format!(
            "metadata: {{name: p}}\nspec:\n  volumes:\n  - name: v\n    hostPath: {{path: /srv}}\n{spec}  containers:\n  - name: c\n    image: busybox\n    volumeMounts: [{{name: v, mountPath: /data}}]\n{container}"
        );
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_base_pod_is_valid() {
        assert_eq!(validate(&pod("", "")), Ok(()));
        let fine = "    resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: '1', memory: 1Gi}}\n";
        assert_eq!(validate(&pod("", fine)), Ok(()));
    }

    #[test]
    fn hostile_specs_name_the_field_and_the_value() {
        let huge = "x".repeat(300 * 1024);
        let cases: Vec<(String, String, &str, &str)> = vec![
            (
                "  - name: v\n    emptyDir: {}\n".into(),
                String::new(),
                "spec.volumes[1].name",
                "duplicate value \"v\"",
            ),
            (
                "  - name: Bad_Vol\n    emptyDir: {}\n".into(),
                String::new(),
                "spec.volumes[1].name",
                "\"Bad_Vol\"",
            ),
            (
                "  - name: up\n    hostPath: {path: /srv/../etc}\n".into(),
                String::new(),
                "spec.volumes[1].hostPath.path",
                "\"/srv/../etc\": must not contain '..'",
            ),
            (
                "  - name: up\n    hostPath: {path: ''}\n".into(),
                String::new(),
                "spec.volumes[1].hostPath.path",
                "required value",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: nope, mountPath: /x}]\n".into(),
                "spec.containers[0].volumeMounts[0].name",
                "not found: \"nope\"",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: v, mountPath: /x, subPath: ../../etc}]\n".into(),
                "spec.containers[0].volumeMounts[0].subPath",
                "\"../../etc\": must not contain '..'",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: v, mountPath: /x, subPath: a/../../b}]\n".into(),
                "spec.containers[0].volumeMounts[0].subPath",
                "must not contain '..'",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: v, mountPath: /x, subPath: /etc}]\n".into(),
                "spec.containers[0].volumeMounts[0].subPath",
                "\"/etc\": must be a relative path",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: v, mountPath: /x, subPathExpr: '../$(POD)'}]\n".into(),
                "spec.containers[0].volumeMounts[0].subPathExpr",
                "must not contain '..'",
            ),
            (
                String::new(),
                "    volumeMounts: [{name: v, mountPath: ''}]\n".into(),
                "spec.containers[0].volumeMounts[0].mountPath",
                "required value",
            ),
            (
                String::new(),
                "    resources: {limits: {memory: 12Zi}}\n".into(),
                "spec.containers[0].resources.limits.memory",
                "\"12Zi\": quantities must match",
            ),
            (
                String::new(),
                "    resources: {requests: {cpu: '-1'}}\n".into(),
                "spec.containers[0].resources.requests.cpu",
                "\"-1\": must be greater than or equal to 0",
            ),
            (
                String::new(),
                "    resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}\n".into(),
                "spec.containers[0].resources.requests",
                "\"2\": must be less than or equal to cpu limit",
            ),
            (
                String::new(),
                "    resources: {limits: {memory: ''}}\n".into(),
                "spec.containers[0].resources.limits.memory",
                "\"\": quantities must match",
            ),
        ];
        for (spec, container, field, reason) in cases {
            let (f, r) = validate(&pod(&spec, &container)).unwrap_err();
            assert_eq!(f, field, "{spec}{container}");
            assert!(r.contains(reason), "{field}: {r}");
        }
        let mut p = pod("", "");
        p.metadata.annotations = Some(BTreeMap::from([("a".to_string(), huge)]));
        let (f, r) = validate(&p).unwrap_err();
        assert_eq!(f, "metadata.annotations");
        assert!(r.contains("262144"), "{r}");
        let mut p = pod("", "");
        p.metadata.labels = Some(BTreeMap::from([("a".to_string(), "y".repeat(64))]));
        assert_eq!(validate(&p).unwrap_err().0, "metadata.labels[a]");
    }
}
