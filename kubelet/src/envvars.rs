//! Container environment as upstream's `makeEnvironmentVariables`: literal values with
//! `$(VAR)` references to earlier variables expanded, `valueFrom.fieldRef` (pod metadata,
//! spec and status fields) and `valueFrom.resourceFieldRef` (requests and limits, limits
//! defaulting to node allocatable), and the `$(VAR)` expansion of command and args
//! (upstream's `expansion.Expand`: `$$` escapes, unknown references stay as written).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};

use crate::objects::ObjectError;
use crate::resources::{
    container_resources, parse_milli, NodeAllocatable, QuantityError, ResourceError,
};
use crate::services::ServiceError;

/// Why a container's environment (or a downward API value) cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvError {
    #[error("unsupported fieldRef fieldPath {path:?}")]
    UnsupportedFieldPath { path: String },
    #[error(transparent)]
    Resources(#[from] ResourceError),
    #[error("resourceFieldRef.divisor: {0}")]
    Divisor(QuantityError),
    #[error("resourceFieldRef.divisor {value:?} must not be negative")]
    NegativeDivisor { value: String },
    #[error("unsupported resourceFieldRef resource {resource:?}")]
    UnsupportedResource { resource: String },
    #[error(transparent)]
    Services(#[from] ServiceError),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("envFrom[{index}].configMapRef: {source}")]
    EnvFromConfigMap { index: usize, source: ObjectError },
    #[error("envFrom[{index}].secretRef: {source}")]
    EnvFromSecret { index: usize, source: ObjectError },
    /// `kind` is "configmap" or "secret".
    #[error("envFrom[{index}]: {kind} {name:?} not found")]
    EnvFromNotFound {
        index: usize,
        kind: &'static str,
        name: String,
    },
    #[error("resourceFieldRef.containerName {container:?} is not a container of the pod")]
    UnknownContainer { container: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// `kind` is "ConfigMap" or "Secret".
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        key: String,
        namespace: String,
        name: String,
    },
    #[error("valueFrom names no source")]
    NoSource,
    /// An error in the value of one variable of `env`.
    #[error("env {name}: {source}")]
    Var { name: String, source: Box<EnvError> },
}

impl EnvError {
    fn var(name: &str) -> impl FnOnce(EnvError) -> EnvError + '_ {
        move |e| EnvError::Var {
            name: name.to_string(),
            source: Box::new(e),
        }
    }
}

/// Expands `$(VAR)` in `input` with `lookup`, as upstream's `expansion.Expand`.
pub(crate) fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let b = input.as_bytes();
    let mut i = 0;
    let mut checkpoint = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[checkpoint..i]);
            match b[i + 1] {
                // `$$` is an escaped `$`.
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(end) => {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += 2 + end + 1;
                    }
                    // Not closed: kept as written.
                    None => {
                        out.push_str(&input[i..]);
                        i = b.len();
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            checkpoint = i;
        } else {
            i += 1;
        }
    }
    if checkpoint < b.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// What field references can see besides the pod.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuntimeFields {
    pub(crate) pod_ips: Vec<String>,
    pub(crate) host_ip: Option<String>,
    pub(crate) node_name: String,
}

fn map_key<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    let inner = rest.strip_prefix("['")?.strip_suffix("']")?;
    Some(inner)
}

/// The value of a `fieldRef` (upstream `podFieldSelectorRuntimeValue`).
pub(crate) fn field_ref_value(
    pod: &Pod,
    sel: &ObjectFieldSelector,
    rt: &RuntimeFields,
) -> Result<String, EnvError> {
    let path = sel.field_path.as_str();
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let v = match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| rt.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => rt.host_ip.clone().unwrap_or_default(),
        "status.podIP" => rt.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => rt.pod_ips.join(","),
        _ => {
            if let Some(k) = map_key(path, "metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = map_key(path, "metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_default()
            } else if path == "metadata.labels" || path == "metadata.annotations" {
                let map = if path == "metadata.labels" {
                    m.labels.clone()
                } else {
                    m.annotations.clone()
                };
                map.unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                return Err(EnvError::UnsupportedFieldPath {
                    path: path.to_string(),
                });
            }
        }
    };
    Ok(v)
}

/// The value of a `resourceFieldRef` for `container` (upstream
/// `ExtractContainerResourceValue`, limits defaulting to node allocatable).
pub(crate) fn resource_field_value(
    container: &Container,
    sel: &ResourceFieldSelector,
    node: &NodeAllocatable,
) -> Result<String, EnvError> {
    let r = container_resources(container)?;
    // The API server defaults an absent divisor to "0"; upstream reads 0 as 1.
    let divisor = match &sel.divisor {
        Some(q) => parse_milli(&q.0).map_err(EnvError::Divisor)?,
        None => 1000,
    };
    let divisor = if divisor == 0 { 1000 } else { divisor };
    if divisor < 0 {
        return Err(EnvError::NegativeDivisor {
            value: sel
                .divisor
                .as_ref()
                .map(|q| q.0.clone())
                .unwrap_or_default(),
        });
    }
    let (value_milli, cpu): (i128, bool) = match sel.resource.as_str() {
        "limits.cpu" => (r.cpu_limit.unwrap_or(node.cpu_milli) as i128, true),
        "requests.cpu" => (r.cpu_request.unwrap_or(0) as i128, true),
        "limits.memory" => (r.mem_limit.unwrap_or(node.memory) as i128 * 1000, false),
        "requests.memory" => (r.mem_request.unwrap_or(0) as i128 * 1000, false),
        other => {
            return Err(EnvError::UnsupportedResource {
                resource: other.to_string(),
            })
        }
    };
    let mut v = (value_milli + divisor - 1) / divisor;
    // Upstream reports at least 1 core for a CPU limit.
    if cpu && sel.resource == "limits.cpu" && v == 0 {
        v = 1;
    }
    Ok(v.to_string())
}

/// Upstream's `IsEnvVarName`: letters, digits, `_`, `-` and `.`, not starting with a digit.
pub(crate) fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The container's environment in order, with references resolved and `$(VAR)` expanded:
/// `envFrom` sources first (keys that are not valid names are skipped, as upstream), then
/// `env`, whose entries win.
pub(crate) fn make_env(
    pod: &Pod,
    container: &Container,
    rt: &RuntimeFields,
    node: &NodeAllocatable,
    objects: &crate::objects::PodObjects,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let services = match &objects.service_env {
        Some(Ok(v)) => v.as_slice(),
        Some(Err(e)) => return Err(e.clone().into()),
        None => &[],
    };
    let service_map: HashMap<&str, &str> = services
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut map: HashMap<String, String> = HashMap::new();
    let set =
        |out: &mut Vec<(String, String)>, map: &mut HashMap<String, String>, k: &str, v: String| {
            map.insert(k.to_string(), v.clone());
            if let Some(slot) = out.iter_mut().find(|(ok, _)| ok == k) {
                slot.1 = v;
            } else {
                out.push((k.to_string(), v));
            }
        };
    for (i, src) in container.env_from.iter().flatten().enumerate() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &src.config_map_ref {
            let cm = objects
                .config_map(ns, &r.name)
                .map_err(|source| EnvError::EnvFromConfigMap { index: i, source })?;
            (
                cm.map(crate::objects::config_map_data),
                r.optional.unwrap_or(false),
                ("configmap", &r.name),
            )
        } else if let Some(r) = &src.secret_ref {
            let s = objects
                .secret(ns, &r.name)
                .map_err(|source| EnvError::EnvFromSecret { index: i, source })?;
            (
                s.map(crate::objects::secret_data),
                r.optional.unwrap_or(false),
                ("secret", &r.name),
            )
        } else {
            continue;
        };
        let Some(data) = data else {
            if optional {
                continue;
            }
            return Err(EnvError::EnvFromNotFound {
                index: i,
                kind: what.0,
                name: what.1.clone(),
            });
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if !is_env_var_name(&name) {
                tracing::warn!(container = %container.name, key = %k, source = %format_args!("{} {:?}", what.0, what.1), "skipping invalid environment variable name (InvalidEnvironmentVariableNames)");
                continue;
            }
            set(
                &mut out,
                &mut map,
                &name,
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                // References see the variables declared so far, then the services'.
                let v = e.value.clone().unwrap_or_default();
                expand(&v, &|n| {
                    map.get(n)
                        .cloned()
                        .or_else(|| service_map.get(n).map(|s| s.to_string()))
                })
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    field_ref_value(pod, f, rt).map_err(EnvError::var(&e.name))?
                } else if let Some(r) = &src.resource_field_ref {
                    // A reference names a container of this pod; default is this one.
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(n) if n != container.name => crate::pod_util::app_containers(pod)
                            .iter()
                            .chain(crate::pod_util::init_containers(pod))
                            .find(|c| c.name == n)
                            .ok_or_else(|| {
                                EnvError::var(&e.name)(EnvError::UnknownContainer {
                                    container: n.to_string(),
                                })
                            })?,
                        _ => container,
                    };
                    resource_field_value(target, r, node).map_err(EnvError::var(&e.name))?
                } else if let Some(r) = &src.config_map_key_ref {
                    let cm = objects
                        .config_map(ns, &r.name)
                        .map_err(|m| EnvError::var(&e.name)(m.into()))?;
                    let value = cm.and_then(|cm| {
                        crate::objects::config_map_data(cm)
                            .into_iter()
                            .find(|(k, _)| *k == r.key)
                            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                    });
                    match (value, cm.is_some(), r.optional.unwrap_or(false)) {
                        (Some(v), _, _) => v,
                        (None, _, true) => continue,
                        (None, false, false) => {
                            return Err(EnvError::var(&e.name)(EnvError::NotFound {
                                kind: "configmap",
                                name: r.name.clone(),
                            }))
                        }
                        (None, true, false) => {
                            return Err(EnvError::var(&e.name)(EnvError::KeyNotFound {
                                kind: "ConfigMap",
                                key: r.key.clone(),
                                namespace: ns.to_string(),
                                name: r.name.clone(),
                            }))
                        }
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let sec = objects
                        .secret(ns, &r.name)
                        .map_err(|m| EnvError::var(&e.name)(m.into()))?;
                    let value = sec.and_then(|s| {
                        crate::objects::secret_data(s)
                            .into_iter()
                            .find(|(k, _)| *k == r.key)
                            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                    });
                    match (value, sec.is_some(), r.optional.unwrap_or(false)) {
                        (Some(v), _, _) => v,
                        (None, _, true) => continue,
                        (None, false, false) => {
                            return Err(EnvError::var(&e.name)(EnvError::NotFound {
                                kind: "secret",
                                name: r.name.clone(),
                            }))
                        }
                        (None, true, false) => {
                            return Err(EnvError::var(&e.name)(EnvError::KeyNotFound {
                                kind: "Secret",
                                key: r.key.clone(),
                                namespace: ns.to_string(),
                                name: r.name.clone(),
                            }))
                        }
                    }
                } else {
                    return Err(EnvError::var(&e.name)(EnvError::NoSource));
                }
            }
        };
        set(&mut out, &mut map, &e.name, value);
    }
    // Service variables the container does not set itself come last.
    for (k, v) in services {
        if !map.contains_key(k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// Command and args with `$(VAR)` expanded from `env`.
pub(crate) fn expand_command(
    container: &Container,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let lookup = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let f = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|s| expand(s, &lookup))
            .collect::<Vec<_>>()
    };
    (f(&container.command), f(&container.args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn lk(n: &str) -> Option<String> {
        match n {
            "A" => Some("x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_as_upstream() {
        assert_eq!(expand("$(A)", &lk), "x");
        assert_eq!(expand("a$(A)b$(A)", &lk), "axbx");
        assert_eq!(expand("$(B)", &lk), "$(B)");
        assert_eq!(expand("$$(A)", &lk), "$(A)");
        assert_eq!(expand("$$$(A)", &lk), "$x");
        assert_eq!(expand("$A", &lk), "$A");
        assert_eq!(expand("$(A", &lk), "$(A");
        assert_eq!(expand("tail$", &lk), "tail$");
        assert_eq!(expand("$(EMPTY)-", &lk), "-");
        assert_eq!(expand("", &lk), "");
        assert_eq!(expand("ünï$(A)cödé", &lk), "ünïxcödé");
    }

    #[test]
    fn env_with_references() {
        let text = "kind: Pod\nmetadata: {name: web, namespace: ns, labels: {app: a}}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    resources: {limits: {memory: 64Mi}, requests: {cpu: 250m}}\n    command: [echo, '$(POD)', '$$(POD)']\n    env:\n    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}\n    - {name: LCPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}\n    - {name: BOTH, value: '$(POD)@$(IP)'}\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n1").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let rt = RuntimeFields {
            pod_ips: vec!["10.1.0.5".into()],
            host_ip: None,
            node_name: "n1".into(),
        };
        let node = NodeAllocatable {
            cpu_milli: 2000,
            memory: 1 << 30,
        };
        let env = make_env(&pod, c, &rt, &node, &Default::default()).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("POD"), "web-n1");
        assert_eq!(get("IP"), "10.1.0.5");
        assert_eq!(get("APP"), "a");
        assert_eq!(get("MEM"), "64");
        assert_eq!(get("CPU"), "250");
        assert_eq!(get("LCPU"), "2");
        assert_eq!(get("BOTH"), "web-n1@10.1.0.5");
        let (cmd, _) = expand_command(c, &env);
        assert_eq!(cmd, ["echo", "web-n1", "$(POD)"]);
    }

    #[test]
    fn zero_divisor_reads_as_one() {
        // What the API server stores for a resourceFieldRef written without a divisor.
        let text = "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    resources: {limits: {memory: 64Mi, cpu: 1250m}, requests: {memory: 32Mi, cpu: 250m}}\n    env:\n    - {name: LMEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: '0'}}}\n    - {name: RMEM, valueFrom: {resourceFieldRef: {resource: requests.memory, divisor: '0'}}}\n    - {name: LCPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: '0'}}}\n    - {name: RCPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: '0'}}}\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n1").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let node = NodeAllocatable {
            cpu_milli: 2000,
            memory: 1 << 30,
        };
        let env = make_env(
            &pod,
            c,
            &RuntimeFields::default(),
            &node,
            &Default::default(),
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("LMEM"), (64u64 << 20).to_string());
        assert_eq!(get("RMEM"), (32u64 << 20).to_string());
        // CPU in whole cores, rounded up.
        assert_eq!(get("LCPU"), "2");
        assert_eq!(get("RCPU"), "1");
        let neg = ResourceFieldSelector {
            resource: "limits.cpu".into(),
            divisor: Some(Quantity("-1".into())),
            container_name: None,
        };
        let e = resource_field_value(c, &neg, &node).unwrap_err();
        assert_eq!(
            e.to_string(),
            "resourceFieldRef.divisor \"-1\" must not be negative"
        );
    }

    #[test]
    fn service_variables_come_last_and_can_be_referenced() {
        let text = "kind: Pod\nmetadata: {name: web, namespace: ns}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    env:\n    - {name: URL, value: 'https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)'}\n    - {name: KUBERNETES_SERVICE_PORT, value: '6443'}\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n1").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let node = NodeAllocatable {
            cpu_milli: 1000,
            memory: 1,
        };
        let objects = crate::objects::PodObjects {
            api: true,
            service_env: Some(Ok(vec![
                ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
                ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ])),
            ..Default::default()
        };
        let env = make_env(&pod, c, &RuntimeFields::default(), &node, &objects).unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["URL", "KUBERNETES_SERVICE_PORT", "KUBERNETES_SERVICE_HOST"]
        );
        assert_eq!(env[0].1, "https://10.96.0.1:443");
        assert_eq!(env[1].1, "6443", "the container's own value wins");
        let not_yet = crate::objects::PodObjects {
            api: true,
            service_env: Some(Err(crate::services::ServiceError::NotSynced)),
            ..Default::default()
        };
        let e = make_env(&pod, c, &RuntimeFields::default(), &node, &not_yet).unwrap_err();
        assert_eq!(
            e.to_string(),
            "services have not yet been read at least once, cannot construct envvars"
        );
    }

    #[test]
    fn bad_field_path_is_an_error() {
        let text = "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    env: [{name: X, valueFrom: {fieldRef: {fieldPath: spec.bogus}}}]\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n1").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let e = make_env(
            &pod,
            c,
            &RuntimeFields::default(),
            &NodeAllocatable {
                cpu_milli: 1000,
                memory: 1,
            },
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "env X: unsupported fieldRef fieldPath \"spec.bogus\""
        );
    }

    #[test]
    fn env_from_config_maps_and_secrets() {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        use k8s_openapi::ByteString;
        let text = "kind: Pod\nmetadata: {name: web, namespace: ns}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    envFrom:\n    - {configMapRef: {name: cm}, prefix: CM_}\n    - {secretRef: {name: gone, optional: true}}\n    env:\n    - {name: CM_A, value: override}\n    - {name: PW, valueFrom: {secretKeyRef: {name: s, key: password}}}\n    - {name: OPT, valueFrom: {configMapKeyRef: {name: cm, key: nokey, optional: true}}}\n    - {name: B2, value: '$(CM_B)!'}\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n1").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let mut objects = crate::objects::PodObjects {
            api: true,
            ..Default::default()
        };
        let cm = ConfigMap {
            data: Some(
                [("A", "1"), ("B", "2"), ("bad key", "x")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        objects
            .config_maps
            .insert(("ns".into(), "cm".into()), Some(cm));
        objects
            .config_maps
            .insert(("ns".into(), "gone".into()), None);
        objects.secrets.insert(("ns".into(), "gone".into()), None);
        let sec = Secret {
            data: Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into()),
            ..Default::default()
        };
        objects.secrets.insert(("ns".into(), "s".into()), Some(sec));
        let node = NodeAllocatable {
            cpu_milli: 1000,
            memory: 1,
        };
        let env = make_env(&pod, c, &RuntimeFields::default(), &node, &objects).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CM_A"), Some("override"));
        assert_eq!(get("CM_B"), Some("2"));
        assert_eq!(get("PW"), Some("hunter2"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("B2"), Some("2!"));
        assert!(env.iter().all(|(k, _)| !k.contains(' ')));
        // A missing key that is not optional names the key and the object.
        objects
            .secrets
            .insert(("ns".into(), "s".into()), Some(Secret::default()));
        let e = make_env(&pod, c, &RuntimeFields::default(), &node, &objects).unwrap_err();
        assert_eq!(
            e.to_string(),
            "env PW: couldn't find key password in Secret ns/s"
        );
    }
}
