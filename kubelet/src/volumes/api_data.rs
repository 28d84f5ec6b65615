//! The API data volumes (downwardAPI, configMap, secret, projected), written atomically
//! and rewritten when their objects change.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Volume};

use crate::envvars::{field_ref_value, resource_field_value, RuntimeFields};
use crate::objects::{config_map_data, secret_data, service_account_name, PodObjects, TokenKey};
use crate::resources::NodeAllocatable;
use crate::volumes::atomic_writer::{self, FileProjection, Payload};

#[allow(unused_imports)]
use super::*;

/// Everything the API data volumes need besides the pod.
pub(crate) struct VolumeInputs<'a> {
    pub(crate) rt: &'a RuntimeFields,
    pub(crate) node: &'a NodeAllocatable,
    pub(crate) objects: &'a PodObjects,
}

pub(super) fn file_mode(item_mode: Option<i32>, default_mode: Option<i32>) -> u32 {
    (item_mode.or(default_mode).unwrap_or(0o644) as u32) & 0o7777
}

/// Adds one projected file, refusing a path that is bad or already taken.
pub(super) fn put(
    volume: &str,
    out: &mut Payload,
    path: &str,
    data: Vec<u8>,
    mode: u32,
) -> Result<(), VolumeError> {
    atomic_writer::check_path(path).map_err(|e| invalid(volume, format!("path {e}")))?;
    if out
        .insert(path.to_string(), FileProjection { data, mode })
        .is_some()
    {
        return Err(invalid(volume, format!("path {path:?} is projected twice")));
    }
    Ok(())
}

pub(super) fn downward_items(
    volume: &str,
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    inp: &VolumeInputs,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    for item in items {
        check_relative(volume, "items.path", &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_ref_value(pod, f, inp.rt).map_err(|m| invalid(volume, m))?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = crate::pod_util::app_containers(pod)
                .iter()
                .chain(crate::pod_util::init_containers(pod))
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    invalid(
                        volume,
                        format!(
                            "resourceFieldRef.containerName {name:?} is not a container of the pod"
                        ),
                    )
                })?;
            resource_field_value(c, r, inp.node).map_err(|m| invalid(volume, m))?
        } else {
            return Err(invalid(
                volume,
                format!("item {:?} has no fieldRef or resourceFieldRef", item.path),
            ));
        };
        put(
            volume,
            out,
            &item.path,
            value.into_bytes(),
            file_mode(item.mode, default_mode),
        )?;
    }
    Ok(())
}

/// The files of a configMap or secret: every key, or the listed `items` (a missing key is an
/// error unless `optional`).
#[allow(clippy::too_many_arguments)]
pub(super) fn key_items(
    volume: &str,
    what: &str,
    data: Option<Vec<(String, Vec<u8>)>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: bool,
    default_mode: Option<i32>,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(invalid(volume, format!("{what} not found")));
    };
    match items {
        None => {
            for (k, v) in data {
                put(volume, out, &k, v, file_mode(None, default_mode))?;
            }
        }
        Some(items) => {
            for it in items {
                match data.iter().find(|(k, _)| *k == it.key) {
                    Some((_, v)) => put(
                        volume,
                        out,
                        &it.path,
                        v.clone(),
                        file_mode(it.mode, default_mode),
                    )?,
                    None if optional => {}
                    None => {
                        return Err(invalid(
                            volume,
                            format!("configuration error: key {:?} not found in {what}", it.key),
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// The payload of an API data volume (downwardAPI, configMap, secret, projected).
pub(super) fn api_payload(
    pod: &Pod,
    v: &Volume,
    inp: &VolumeInputs,
) -> Result<Option<(&'static str, Payload)>, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Payload::new();
    let plugin = if let Some(d) = &v.downward_api {
        downward_items(
            &v.name,
            pod,
            d.items.as_deref().unwrap_or(&[]),
            d.default_mode,
            inp,
            &mut out,
        )?;
        DOWNWARD_API
    } else if let Some(c) = &v.config_map {
        let cm = inp
            .objects
            .config_map(ns, &c.name)
            .map_err(|e| invalid(&v.name, e))?;
        key_items(
            &v.name,
            &format!("configmap {:?}", c.name),
            cm.map(config_map_data),
            c.items.as_ref(),
            c.optional.unwrap_or(false),
            c.default_mode,
            &mut out,
        )?;
        CONFIG_MAP
    } else if let Some(sv) = &v.secret {
        let name = sv.secret_name.as_deref().unwrap_or("");
        let sec = inp
            .objects
            .secret(ns, name)
            .map_err(|e| invalid(&v.name, e))?;
        key_items(
            &v.name,
            &format!("secret {name:?}"),
            sec.map(secret_data),
            sv.items.as_ref(),
            sv.optional.unwrap_or(false),
            sv.default_mode,
            &mut out,
        )?;
        SECRET
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let cm = inp
                    .objects
                    .config_map(ns, &c.name)
                    .map_err(|e| invalid(&v.name, e))?;
                key_items(
                    &v.name,
                    &format!("configmap {:?}", c.name),
                    cm.map(config_map_data),
                    c.items.as_ref(),
                    c.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(sv) = &src.secret {
                let sec = inp
                    .objects
                    .secret(ns, &sv.name)
                    .map_err(|e| invalid(&v.name, e))?;
                key_items(
                    &v.name,
                    &format!("secret {:?}", sv.name),
                    sec.map(secret_data),
                    sv.items.as_ref(),
                    sv.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(d) = &src.downward_api {
                downward_items(
                    &v.name,
                    pod,
                    d.items.as_deref().unwrap_or(&[]),
                    p.default_mode,
                    inp,
                    &mut out,
                )?;
            } else if let Some(t) = &src.service_account_token {
                let key = TokenKey {
                    namespace: ns.to_string(),
                    service_account: service_account_name(pod),
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                };
                let token = inp.objects.token(&key).map_err(|e| invalid(&v.name, e))?;
                // As upstream, the token file takes the volume's defaultMode.
                put(
                    &v.name,
                    &mut out,
                    &t.path,
                    token.as_bytes().to_vec(),
                    file_mode(None, p.default_mode),
                )?;
            }
        }
        PROJECTED
    } else {
        return Ok(None);
    };
    Ok(Some((plugin, out)))
}

/// Writes an API data volume (only when its content changed).
pub(super) fn api_volume(
    root: &Path,
    pod: &Pod,
    v: &Volume,
    inp: &VolumeInputs,
    fs_group: Option<i64>,
) -> Result<Option<HostVolume>, VolumeError> {
    let Some((plugin, payload)) = api_payload(pod, v, inp)? else {
        return Ok(None);
    };
    let dir = root.join(plugin).join(&v.name);
    std::fs::create_dir_all(&dir).map_err(io(&v.name, &dir))?;
    if plugin == SECRET || plugin == PROJECTED {
        mount_tmpfs(&v.name, &dir, None)?;
    }
    let gid = if plugin == DOWNWARD_API {
        None
    } else {
        fs_group.map(|g| g as u32)
    };
    match atomic_writer::write(&dir, &payload, gid) {
        Ok(true) => {
            tracing::debug!(volume = %v.name, plugin, files = payload.len(), "volume written")
        }
        Ok(false) => {}
        Err(e) => return Err(io(&v.name, &dir)(e)),
    }
    Ok(Some(HostVolume {
        path: dir,
        read_only: true,
        writable_dir: false,
    }))
}
