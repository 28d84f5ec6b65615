//! The binary's handling of bad flags and configuration: a clear error naming the field and
//! the value, exit status 1, before anything starts; an unknown field is only a warning.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubelet"))
        .args(args)
        .output()
        .expect("run kubelet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn config(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// Runs the kubelet with the config `text` and a private --root-dir (it makes the directory
/// before the checks that stop it).
fn run_config(text: &str) -> (i32, String) {
    let f = config(text);
    let dir = tempfile::tempdir().unwrap();
    run(&[
        "--config",
        f.path().to_str().unwrap(),
        "--root-dir",
        dir.path().to_str().unwrap(),
    ])
}

#[test]
fn bad_duration_in_config_exits_1_naming_field_and_value() {
    let f = config("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nfileCheckFrequency: 20parsecs\n");
    let (code, err) = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fileCheckFrequency") && err.contains("20parsecs"),
        "{err}"
    );
}

#[test]
fn unknown_config_field_is_a_warning_naming_it() {
    // As upstream: decoded leniently, the field named in a warning. The missing cgroupRoot
    // then stops the kubelet before it touches anything, so this test ends.
    let (code, err) =
        run_config("staticPodPth: /etc/kubernetes/manifests\ncgroupRoot: /nodus-no-such-cgroup\n");
    assert!(
        err.contains("strict decoding error: unknown field \"staticPodPth\""),
        "{err}"
    );
    // It got past the configuration: what stopped it is the cgroup root.
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cgroup-root \"/nodus-no-such-cgroup\" doesn't exist"),
        "{err}"
    );
}

#[test]
fn an_unknown_cgroup_driver_is_refused_naming_it() {
    let f = config("cgroupDriver: openrc\n");
    let (code, err) = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cgroupDriver") && err.contains("openrc") && err.contains("cgroupfs, systemd"),
        "{err}"
    );
}

#[test]
fn the_systemd_driver_needs_systemd_as_init() {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIP: systemd is init here; the VM tier runs the kubelet on the systemd driver");
        return;
    }
    let (code, err) = run_config("cgroupDriver: systemd\n");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "systemd cgroup flag passed, but systemd support for managing cgroups is not available"
        ),
        "{err}"
    );
}

#[test]
fn version_is_printed_as_upstream_prints_it() {
    // kubeadm's preflight runs `kubelet --version` and parses "Kubernetes vX.Y.Z".
    let out = Command::new(env!("CARGO_BIN_EXE_kubelet"))
        .arg("--version")
        .output()
        .expect("run kubelet");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("Kubernetes v1."), "{text}");
    let (code, err) = run(&["--version=yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--version") && err.contains("yes"), "{err}");
}

#[test]
fn missing_config_file_and_bad_flags_exit_nonzero() {
    let (code, err) = run(&["--config", "/nonexistent/kubelet.yaml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/kubelet.yaml"), "{err}");
    let (code, err) = run(&["--node-ip", "not-an-ip"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--node-ip") && err.contains("not-an-ip"),
        "{err}"
    );
    // clap's own usage errors exit 2, as upstream's flag parsing fails.
    let (code, _) = run(&["--read-only-port", "many"]);
    assert_ne!(code, 0);
}
