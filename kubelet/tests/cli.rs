//! The binary's handling of bad flags and configuration: a clear error naming the field and
//! the value, exit status 1, before anything starts.

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
fn unknown_config_field_exits_1() {
    let f = config("staticPodPth: /etc/kubernetes/manifests\n");
    let (code, err) = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("staticPodPth"), "{err}");
}

#[test]
fn systemd_cgroup_driver_is_refused_clearly() {
    let f = config("cgroupDriver: systemd\n");
    let (code, err) = run(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cgroupDriver") && err.contains("systemd") && err.contains("cgroupfs"),
        "{err}"
    );
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
