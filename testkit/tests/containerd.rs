//! The private containerd runs a pause sandbox and a busybox container through the generated
//! CRI client, the container's output reaches its CRI log file, and dropping the instance
//! leaves no mount, process, cgroup or network namespace behind.

use std::time::Duration;

use nodus_proto::runtime::v1::{ContainerState, ListImagesRequest, VersionRequest};
use nodus_testkit::{
    cleanup, cri, Cni, ContainerdOptions, PrivateContainerd, BUSYBOX_IMAGE, PAUSE_IMAGE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_and_container_run_and_leave_nothing_behind() {
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::ReferenceBridge {
            subnet: "10.66.0.0/24".into(),
        },
        ..Default::default()
    })
    .await
    .expect("private containerd starts");
    let dir = ctrd.dir().to_path_buf();
    let netns_path = ctrd.node_netns().path().to_path_buf();
    let cgroup_parent = ctrd.cgroup_parent();
    let socket = ctrd.socket().display().to_string();

    let mut rt = ctrd.runtime().await.unwrap();
    let version = rt
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");

    let mut images = ctrd.images().await.unwrap();
    let listed = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    for wanted in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        assert!(
            listed
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == wanted)),
            "{wanted} not in {:?}",
            listed.iter().map(|i| &i.repo_tags).collect::<Vec<_>>()
        );
    }

    let sandbox_config = ctrd.sandbox_config("hello");
    let log_dir = std::path::PathBuf::from(&sandbox_config.log_directory);
    let sandbox_id = cri::run_sandbox(&mut rt, &sandbox_config, "")
        .await
        .expect("RunPodSandbox");
    let greeter = cri::busybox_sh("greeter", "echo hello from nodus; ip -4 addr show eth0");
    let container_id = cri::create_and_start(&mut rt, &sandbox_id, &sandbox_config, greeter)
        .await
        .expect("CreateContainer and StartContainer");

    let status = cri::wait_exited(&mut rt, &container_id, Duration::from_secs(20))
        .await
        .expect("the container exits");
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0);

    // CRI log format: "<RFC3339Nano> stdout F <line>".
    let log = std::fs::read_to_string(log_dir.join("greeter/0.log")).expect("CRI log file");
    let lines: Vec<&str> = log.lines().collect();
    let hello = lines
        .iter()
        .find(|l| l.ends_with(" stdout F hello from nodus"))
        .unwrap_or_else(|| panic!("no greeting in log:\n{log}"));
    assert!(hello.split(' ').next().unwrap().contains('T'));
    assert!(
        log.contains("inet 10.66.0."),
        "no pod address in log:\n{log}"
    );
    drop(rt);
    drop(images);
    drop(ctrd);

    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!netns_path.exists(), "{} left behind", netns_path.display());
    assert!(cleanup::mounts_under(&dir).is_empty());
    assert!(
        cleanup::pids_with_cmdline(&[&socket]).is_empty(),
        "processes left"
    );
    assert!(cleanup::cgroup_pids(&cgroup_parent).is_empty());
    for root in cleanup::cgroup_roots() {
        let left = root.join(cgroup_parent.trim_start_matches('/'));
        assert!(!left.exists(), "{} left behind", left.display());
    }
}
