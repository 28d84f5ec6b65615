//! Local OCI images with no registry: `pause` (our static binary) and `busybox` (Debian's
//! busybox-static with its applet links).
//!
//! Every byte is a function of the inputs: tar entries are sorted and carry mtime 0 and uid/gid
//! 0, gzip carries no timestamp or name, JSON is written with a fixed field order and no
//! creation date. So a rebuild gives the same digests, and `ctr images import` of a rebuilt
//! archive is a no-op for containerd.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The sandbox image every pod of ours uses.
pub const PAUSE_IMAGE: &str = "localhost/nodus/pause:1.0";
/// The workload image for tests and demo pods.
pub const BUSYBOX_IMAGE: &str = "localhost/nodus/busybox:1.35";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One file system entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

/// What an image is made of before it is written: one layer of `entries` (paths relative to
/// the root) and the run config.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub entries: BTreeMap<String, Entry>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    /// The image's `User` (uid, or uid:gid).
    pub user: Option<String>,
    /// Upstream pause images set this so a kubelet sends SIGINT; ours handles both.
    pub stop_signal: Option<&'static str>,
}

/// A built archive: where it is and the digest of its manifest (what `ctr images ls` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub name: String,
    pub archive: PathBuf,
    pub manifest_digest: String,
}

/// Paths of the inputs.
#[derive(Debug, Clone)]
pub struct ImageInputs {
    /// Source of the pause program (compiled here with `rustc` into a static binary).
    pub pause_source: PathBuf,
    /// Debian's statically linked busybox.
    pub busybox: PathBuf,
}

impl Default for ImageInputs {
    fn default() -> Self {
        ImageInputs {
            pause_source: crate::workspace_root().join("hack/pause/src/main.rs"),
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

/// The repository's image output directory (`build/images`, ignored by git).
pub fn default_out_dir() -> PathBuf {
    crate::workspace_root().join("build/images")
}

/// Builds both archives into `out_dir` (created if needed) and returns them.
///
/// Safe to call from many tests at once: the work happens under an exclusive `flock` on
/// `out_dir/.lock`, and archives are written to a temporary name and renamed.
pub fn build_all(inputs: &ImageInputs, out_dir: &Path) -> Result<Vec<BuiltImage>> {
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let _lock = crate::cleanup::FileLock::exclusive(&out_dir.join(".lock"))?;
    let pause = compile_pause(&inputs.pause_source, out_dir)?;
    let specs = [
        (pause_spec(&pause)?, "pause"),
        (busybox_spec(&inputs.busybox)?, "busybox"),
    ];
    specs
        .iter()
        .map(|(spec, file)| write_archive(spec, out_dir, file))
        .collect()
}

/// Compiles the pause program as a static, stripped, path-independent binary.
fn compile_pause(source: &Path, out_dir: &Path) -> Result<PathBuf> {
    let out = out_dir.join("pause");
    let tmp = out_dir.join(format!(".pause.{}", std::process::id()));
    let src_dir = source
        .parent()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("/"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "pause",
            "-C",
            "opt-level=z",
            "-C",
            "lto",
            "-C",
            "codegen-units=1",
            "-C",
            "panic=abort",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
        ])
        .arg(format!("--remap-path-prefix={}=pause", src_dir.display()))
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| Error::io(Path::new(&rustc), e))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{rustc} {}", source.display()),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    fs::rename(&tmp, &out).map_err(|e| Error::io(&out, e))?;
    Ok(out)
}

/// The pause image ([`PAUSE_IMAGE`]) around a compiled pause binary.
pub fn pause_spec(pause_binary: &Path) -> Result<ImageSpec> {
    let data = fs::read(pause_binary).map_err(|e| Error::io(pause_binary, e))?;
    let mut entries = BTreeMap::new();
    entries.insert("pause".to_string(), Entry::File { data, mode: 0o755 });
    Ok(ImageSpec {
        name: PAUSE_IMAGE.into(),
        entries,
        entrypoint: Some(vec!["/pause".into()]),
        cmd: None,
        env: vec![DEFAULT_PATH.into()],
        user: None,
        stop_signal: Some("SIGINT"),
    })
}

/// The busybox image ([`BUSYBOX_IMAGE`]): Debian's static busybox and its applet links, a
/// root and a nobody user.
pub fn busybox_spec(busybox: &Path) -> Result<ImageSpec> {
    let data = fs::read(busybox).map_err(|e| Error::io(busybox, e))?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| Error::io(busybox, e))?;
    if !list.status.success() {
        return Err(Error::Command {
            command: format!("{} --list-full", busybox.display()),
            detail: String::from_utf8_lossy(&list.stderr).into_owned(),
        });
    }
    let mut entries = BTreeMap::new();
    for dir in [
        "bin", "dev", "etc", "home", "proc", "root", "sbin", "sys", "usr", "usr/bin", "usr/sbin",
        "var",
    ] {
        entries.insert(dir.to_string(), Entry::Dir { mode: 0o755 });
    }
    entries.insert("tmp".into(), Entry::Dir { mode: 0o1777 });
    entries.insert("bin/busybox".into(), Entry::File { data, mode: 0o755 });
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        entries.insert(
            applet.to_string(),
            Entry::Symlink {
                target: "/bin/busybox".into(),
            },
        );
    }
    let etc = |s: &str| Entry::File {
        data: s.as_bytes().to_vec(),
        mode: 0o644,
    };
    entries.insert(
        "etc/passwd".into(),
        etc("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"),
    );
    entries.insert("etc/group".into(), etc("root:x:0:\nnogroup:x:65534:\n"));
    Ok(ImageSpec {
        name: BUSYBOX_IMAGE.into(),
        entries,
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
        env: vec![DEFAULT_PATH.into()],
        user: None,
        stop_signal: None,
    })
}

/// A tar stream of `entries` in sorted order with fixed metadata.
fn layer_tar(entries: &BTreeMap<String, Entry>) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let io = |e| Error::io(Path::new(path), e);
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(io)?;
            }
            Entry::File { data, mode } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .map_err(io)?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).map_err(io)?;
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| Error::io(Path::new("layer.tar"), e))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name unless told otherwise.
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    encoder
        .write_all(data)
        .and_then(|_| encoder.finish())
        .map_err(|e| Error::io(Path::new("layer.tar.gz"), e))
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[derive(Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    digest: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: &'static str,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RunConfig {
    #[serde(rename = "Env")]
    env: Vec<String>,
    #[serde(rename = "Entrypoint", skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(rename = "User", skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(rename = "StopSignal", skip_serializing_if = "Option::is_none")]
    stop_signal: Option<&'static str>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Writes one OCI image layout as a tar archive `<out_dir>/<file>.tar`.
pub fn write_archive(spec: &ImageSpec, out_dir: &Path, file: &str) -> Result<BuiltImage> {
    let layer = layer_tar(&spec.entries)?;
    let diff_id = sha256_digest(&layer);
    let layer_gz = gzip(&layer)?;
    let config = to_json(&ImageConfig {
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            env: spec.env.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            user: spec.user.clone(),
            stop_signal: spec.stop_signal,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![diff_id],
        },
    });
    let manifest = to_json(&Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config: Descriptor {
            media_type: MEDIA_CONFIG,
            digest: sha256_digest(&config),
            size: config.len(),
            annotations: None,
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: MEDIA_LAYER,
            digest: sha256_digest(&layer_gz),
            size: layer_gz.len(),
            annotations: None,
            platform: None,
        }],
    });
    let manifest_digest = sha256_digest(&manifest);
    let tag = spec
        .name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = to_json(&Index {
        schema_version: 2,
        manifests: vec![Descriptor {
            media_type: MEDIA_MANIFEST,
            digest: manifest_digest.clone(),
            size: manifest.len(),
            annotations: Some(BTreeMap::from([
                ("io.containerd.image.name", spec.name.to_string()),
                ("org.opencontainers.image.ref.name", tag.to_string()),
            ])),
            platform: Some(Platform {
                architecture: "amd64",
                os: "linux",
            }),
        }],
    });

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for blob in [&config, &manifest, &layer_gz] {
        let digest = sha256_digest(blob);
        files.insert(
            format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
            blob.clone(),
        );
    }
    files.insert("index.json".into(), index);
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    let mut outer: BTreeMap<String, Entry> = BTreeMap::new();
    outer.insert("blobs".into(), Entry::Dir { mode: 0o755 });
    outer.insert("blobs/sha256".into(), Entry::Dir { mode: 0o755 });
    for (path, data) in files {
        outer.insert(path, Entry::File { data, mode: 0o644 });
    }
    let archive_bytes = layer_tar(&outer)?;

    let archive = out_dir.join(format!("{file}.tar"));
    let tmp = out_dir.join(format!(".{file}.tar.{}", std::process::id()));
    fs::write(&tmp, &archive_bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &archive).map_err(|e| Error::io(&archive, e))?;
    Ok(BuiltImage {
        name: spec.name.to_string(),
        archive,
        manifest_digest,
    })
}

/// The archives [`build_all`] wrote into `dir` earlier (`pause.tar`, `busybox.tar`), read
/// back from their index.json: for machines without the toolchain, such as the VM tier's
/// guest, which takes the host's build.
pub fn prebuilt(dir: &Path) -> Result<Vec<BuiltImage>> {
    ["pause.tar", "busybox.tar"]
        .iter()
        .map(|file| {
            let archive = dir.join(file);
            let bad = |detail: String| Error::Command {
                command: format!("read {}", archive.display()),
                detail,
            };
            let f = fs::File::open(&archive).map_err(|e| Error::io(&archive, e))?;
            let mut tar = tar::Archive::new(f);
            let entries = tar.entries().map_err(|e| Error::io(&archive, e))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| Error::io(&archive, e))?;
                if entry.path().ok().as_deref() != Some(Path::new("index.json")) {
                    continue;
                }
                let index: serde_json::Value =
                    serde_json::from_reader(&mut entry).map_err(|e| bad(e.to_string()))?;
                let manifest = &index["manifests"][0];
                let field = |v: &serde_json::Value, what: &str| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("index.json has no {what}")))
                };
                return Ok(BuiltImage {
                    name: field(
                        &manifest["annotations"]["io.containerd.image.name"],
                        "image name",
                    )?,
                    manifest_digest: field(&manifest["digest"], "manifest digest")?,
                    archive: archive.clone(),
                });
            }
            Err(bad("no index.json".into()))
        })
        .collect()
}

/// Imports archives into containerd namespace `namespace` with Debian's `ctr`.
pub fn import(address: &Path, namespace: &str, images: &[BuiltImage]) -> Result<()> {
    for image in images {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(address)
            .args(["--namespace", namespace, "images", "import"])
            .arg(&image.archive)
            .output()
            .map_err(|e| Error::io(Path::new("ctr"), e))?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!("ctr images import {}", image.archive.display()),
                detail: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tar_is_sorted_and_timeless() {
        let mut entries = BTreeMap::new();
        entries.insert("b".to_string(), Entry::Dir { mode: 0o755 });
        entries.insert(
            "a".to_string(),
            Entry::File {
                data: b"x".to_vec(),
                mode: 0o644,
            },
        );
        let bytes = layer_tar(&entries).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<(String, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(names, vec![("a".into(), 0), ("b/".into(), 0)]);
    }

    #[test]
    fn gzip_has_no_timestamp() {
        let a = gzip(b"hello").unwrap();
        // Bytes 4..8 of a gzip member are MTIME.
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a, gzip(b"hello").unwrap());
    }
}
