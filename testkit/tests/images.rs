//! The image tool is reproducible: two builds into different directories give the same bytes.

use nodus_testkit::images::{build_all, prebuilt, ImageInputs, BUSYBOX_IMAGE, PAUSE_IMAGE};

#[test]
fn rebuilds_give_identical_digests_and_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = build_all(&ImageInputs::default(), a.path()).expect("first build");
    let second = build_all(&ImageInputs::default(), b.path()).expect("second build");
    let names: Vec<&str> = first.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec![PAUSE_IMAGE, BUSYBOX_IMAGE]);
    for (x, y) in first.iter().zip(&second) {
        assert_eq!(x.manifest_digest, y.manifest_digest, "{}", x.name);
        assert!(x.manifest_digest.starts_with("sha256:") && x.manifest_digest.len() == 71);
        let bytes_x = std::fs::read(&x.archive).unwrap();
        let bytes_y = std::fs::read(&y.archive).unwrap();
        assert!(bytes_x == bytes_y, "{} archives differ", x.name);
    }
    // Read back from the archives (how the VM guest, with no toolchain, takes them).
    let read_back = prebuilt(a.path()).expect("prebuilt archives");
    assert_eq!(read_back.len(), first.len());
    for (x, y) in first.iter().zip(&read_back) {
        assert_eq!((&x.name, &x.manifest_digest), (&y.name, &y.manifest_digest));
        assert_eq!(x.archive, y.archive);
    }
    let empty = tempfile::tempdir().unwrap();
    let err = prebuilt(empty.path()).expect_err("no archives there");
    assert!(err.to_string().contains("pause.tar"), "{err}");
}

#[test]
fn busybox_image_has_applet_links_and_pause_is_static() {
    let dir = tempfile::tempdir().unwrap();
    let built = build_all(&ImageInputs::default(), dir.path()).unwrap();
    let busybox = built.iter().find(|i| i.name == BUSYBOX_IMAGE).unwrap();
    // Unpack the outer OCI layout, then the single layer, and look at what a container sees.
    let mut outer = tar::Archive::new(std::fs::File::open(&busybox.archive).unwrap());
    let layout = dir.path().join("layout");
    outer.unpack(&layout).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        BUSYBOX_IMAGE
    );
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let layer =
        std::fs::File::open(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let mut links = std::collections::HashMap::new();
    for entry in layer.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let target = entry.link_name().unwrap().map(|t| t.display().to_string());
        links.insert(path, target);
    }
    assert_eq!(links.get("bin/sh"), Some(&Some("/bin/busybox".to_string())));
    assert!(links.contains_key("bin/busybox"));
    assert!(links.len() > 100, "only {} entries", links.len());

    let pause = dir.path().join("pause");
    assert!(
        !has_interpreter(&std::fs::read(&pause).unwrap()),
        "pause is dynamically linked"
    );
    let version = std::process::Command::new(&pause)
        .arg("-v")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("pause (nodus)"));
}

/// Whether an ELF64 file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}
