//! Unit tests: wire format against hand-computed bytes, prost round trips,
//! and `connect` over a real Unix socket served by an in-process tonic server.

use std::collections::HashMap;

use prost::Message;

use super::runtime::v1::*;
use super::*;

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = msg.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("decode what we encoded");
    assert_eq!(&back, msg);
}

// ---- wire bytes computed by hand: tag = (field_number << 3) | wire_type,
// wire type 0 = varint, 2 = length-delimited; tags >= 16 take two bytes.

#[test]
fn version_request_wire_bytes() {
    let msg = VersionRequest {
        version: "v1".into(),
    };
    assert_eq!(msg.encode_to_vec(), [0x0a, 0x02, b'v', b'1']);
}

#[test]
fn pod_sandbox_metadata_wire_bytes() {
    let msg = PodSandboxMetadata {
        name: "n".into(),
        uid: "u".into(),
        namespace: "s".into(),
        attempt: 3,
    };
    // name=1 (0x0a), uid=2 (0x12), namespace=3 (0x1a), attempt=4 varint (0x20)
    assert_eq!(
        msg.encode_to_vec(),
        [0x0a, 1, b'n', 0x12, 1, b'u', 0x1a, 1, b's', 0x20, 3]
    );
}

/// One field set per message, checked against its hand-computed encoding. A
/// wrong field number in api.proto changes the tag byte(s) and fails here.
#[test]
fn field_numbers_kubelet_relies_on() {
    let one = || Some(Int64Value { value: 1 });
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "PodSandboxConfig.log_directory=3",
            PodSandboxConfig {
                log_directory: "d".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x1a, 1, b'd'],
        ),
        (
            "PodSandboxConfig.linux=8",
            PodSandboxConfig {
                linux: Some(LinuxPodSandboxConfig::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x42, 0],
        ),
        (
            "LinuxPodSandboxConfig.cgroup_parent=1",
            LinuxPodSandboxConfig {
                cgroup_parent: "/p".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x0a, 2, b'/', b'p'],
        ),
        (
            "LinuxPodSandboxConfig.resources=5",
            LinuxPodSandboxConfig {
                resources: Some(LinuxContainerResources::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x2a, 0],
        ),
        (
            "LinuxSandboxSecurityContext.run_as_group=8",
            LinuxSandboxSecurityContext {
                run_as_group: one(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x42, 2, 0x08, 1],
        ),
        (
            "LinuxSandboxSecurityContext.supplemental_groups_policy=11",
            LinuxSandboxSecurityContext {
                supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x58, 1],
        ),
        (
            "LinuxSandboxSecurityContext.seccomp=9",
            LinuxSandboxSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x4a, 2, 0x08, 1],
        ),
        (
            "NamespaceOption.pid=2 CONTAINER=1",
            NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x10, 1],
        ),
        (
            "NamespaceOption.network=1 NODE=2",
            NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x08, 2],
        ),
        (
            "ContainerConfig.mounts=7",
            ContainerConfig {
                mounts: vec![Mount::default()],
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x3a, 0],
        ),
        (
            "ContainerConfig.log_path=11",
            ContainerConfig {
                log_path: "l".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x5a, 1, b'l'],
        ),
        (
            "ContainerConfig.linux=15",
            ContainerConfig {
                linux: Some(LinuxContainerConfig::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x7a, 0],
        ),
        (
            "ContainerConfig.CDI_devices=17",
            ContainerConfig {
                cdi_devices: vec![CdiDevice::default()],
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x8a, 0x01, 0],
        ),
        (
            "ContainerConfig.stop_signal=18 SIGTERM=23",
            ContainerConfig {
                stop_signal: Signal::Sigterm as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x90, 0x01, 23],
        ),
        (
            "LinuxContainerResources.memory_limit_in_bytes=4",
            LinuxContainerResources {
                memory_limit_in_bytes: 5,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x20, 5],
        ),
        (
            "LinuxContainerResources.memory_swap_limit_in_bytes=10",
            LinuxContainerResources {
                memory_swap_limit_in_bytes: 5,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x50, 5],
        ),
        (
            "LinuxContainerSecurityContext.run_as_group=12",
            LinuxContainerSecurityContext {
                run_as_group: one(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x62, 2, 0x08, 1],
        ),
        (
            "LinuxContainerSecurityContext.supplemental_groups_policy=17",
            LinuxContainerSecurityContext {
                supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x88, 0x01, 1],
        ),
        (
            "LinuxContainerSecurityContext.masked_paths=13",
            LinuxContainerSecurityContext {
                masked_paths: vec!["m".into()],
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x6a, 1, b'm'],
        ),
        (
            "Mount.propagation=5 BIDIRECTIONAL=2",
            Mount {
                propagation: MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x28, 2],
        ),
        (
            "Mount.image_sub_path=10",
            Mount {
                image_sub_path: "s".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x52, 1, b's'],
        ),
        (
            "ImageSpec.user_specified_image=18",
            ImageSpec {
                user_specified_image: "i".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x92, 0x01, 1, b'i'],
        ),
        (
            "ContainerStatus.exit_code=7 (int32 -1 is ten bytes)",
            ContainerStatus {
                exit_code: -1,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![
                0x38, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        (
            "ContainerStatus.image_id=17",
            ContainerStatus {
                image_id: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x8a, 0x01, 1, b'x'],
        ),
        (
            "PodSandboxStatus.network=5",
            PodSandboxStatus {
                network: Some(PodSandboxNetworkStatus {
                    ip: "i".into(),
                    additional_ips: vec![],
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x2a, 3, 0x0a, 1, b'i'],
        ),
        (
            "ContainerFilter.pod_sandbox_id=3",
            ContainerFilter {
                pod_sandbox_id: "p".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x1a, 1, b'p'],
        ),
        (
            "RuntimeCondition.status=2",
            RuntimeCondition {
                status: true,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x10, 1],
        ),
        (
            "ExecSyncResponse.exit_code=3",
            ExecSyncResponse {
                exit_code: 2,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x18, 2],
        ),
        (
            "Image.pinned=8",
            Image {
                pinned: true,
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x40, 1],
        ),
        (
            "StatusResponse.runtime_handlers=3",
            StatusResponse {
                runtime_handlers: vec![RuntimeHandler::default()],
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x1a, 0],
        ),
        (
            "ContainerStats.swap=5",
            ContainerStats {
                swap: Some(SwapUsage::default()),
                ..Default::default()
            }
            .encode_to_vec(),
            vec![0x2a, 0],
        ),
        (
            "RuntimeConfigResponse.linux.cgroup_driver=1 CGROUPFS=1",
            RuntimeConfigResponse {
                linux: Some(LinuxRuntimeConfiguration {
                    cgroup_driver: CgroupDriver::Cgroupfs as i32,
                }),
            }
            .encode_to_vec(),
            vec![0x0a, 2, 0x08, 1],
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn pod_sandbox_config_roundtrip() {
    let cfg = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "0b6b0c8e-1".into(),
            namespace: "default".into(),
            attempt: 2,
        }),
        hostname: "web".into(),
        log_directory: "/var/log/pods/default_web_0b6b0c8e-1".into(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![PortMapping {
            protocol: Protocol::Udp as i32,
            container_port: 53,
            host_port: 5353,
            host_ip: "127.0.0.1".into(),
        }],
        labels: HashMap::from([("io.kubernetes.pod.name".into(), "web".into())]),
        annotations: HashMap::from([("a".into(), "b".into())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/besteffort/pod0b6b0c8e-1".into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                run_as_user: Some(Int64Value { value: 1000 }),
                supplemental_groups: vec![1, 2, 3],
                ..Default::default()
            }),
            sysctls: HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            overhead: None,
            resources: Some(LinuxContainerResources {
                cpu_shares: 2,
                ..Default::default()
            }),
        }),
        windows: None,
    };
    roundtrip(&cfg);
    roundtrip(&RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: "runc".into(),
    });
}

#[test]
fn container_config_roundtrip() {
    let cfg = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "app".into(),
            attempt: 1,
        }),
        image: Some(ImageSpec {
            image: "docker.io/library/busybox:1.36".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into()],
        args: vec!["-c".into(), "sleep 1".into()],
        working_dir: "/".into(),
        envs: vec![KeyValue {
            key: "A".into(),
            value: "1".into(),
        }],
        mounts: vec![
            Mount {
                container_path: "/data".into(),
                host_path: "/var/lib/kubelet/pods/x/volumes/y".into(),
                readonly: true,
                propagation: MountPropagation::PropagationHostToContainer as i32,
                uid_mappings: vec![IdMapping {
                    host_id: 100000,
                    container_id: 0,
                    length: 65536,
                }],
                ..Default::default()
            },
            Mount {
                container_path: "/img".into(),
                image: Some(ImageSpec {
                    image: "sha256:abc".into(),
                    ..Default::default()
                }),
                image_sub_path: "sub".into(),
                ..Default::default()
            },
        ],
        log_path: "app/1.log".into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: 1000,
                hugepage_limits: vec![HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                }],
                unified: HashMap::from([("memory.high".into(), "max".into())]),
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                no_new_privs: true,
                ..Default::default()
            }),
        }),
        stop_signal: Signal::Sigusr1 as i32,
        ..Default::default()
    };
    roundtrip(&cfg);
}

#[test]
fn list_containers_response_roundtrip() {
    let resp = ListContainersResponse {
        containers: (0..3)
            .map(|i| Container {
                id: format!("c{i}"),
                pod_sandbox_id: "p".into(),
                metadata: Some(ContainerMetadata {
                    name: format!("n{i}"),
                    attempt: i,
                }),
                state: ContainerState::ContainerExited as i32,
                created_at: 1_700_000_000_000_000_000 + i64::from(i),
                labels: HashMap::from([("k".into(), format!("v{i}"))]),
                image_id: "sha256:0".into(),
                ..Default::default()
            })
            .collect(),
    };
    roundtrip(&resp);
    // Decoding a message with unknown (future) fields must still work.
    let mut bytes = resp.encode_to_vec();
    bytes.extend_from_slice(&[0xf8, 0x07, 1]); // field 127, varint 1
    let back = ListContainersResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, resp);
}

#[test]
fn auth_config_debug_redacts_secrets() {
    let auth = AuthConfig {
        username: "user".into(),
        password: "hunter2".into(),
        registry_token: "tok".into(),
        ..Default::default()
    };
    let shown = format!("{auth:?}");
    assert!(shown.contains("user"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("tok\""), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn socket_path_parsing() {
    assert_eq!(
        socket_path("unix:///run/containerd/containerd.sock").unwrap(),
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(
        socket_path("/run/x.sock").unwrap(),
        PathBuf::from("/run/x.sock")
    );
    let err = socket_path("tcp://127.0.0.1:1").unwrap_err();
    assert!(err.to_string().contains("tcp://127.0.0.1:1"), "{err}");
    assert!(matches!(
        socket_path("unix://"),
        Err(ConnectError::InvalidEndpoint { .. })
    ));
}

#[tokio::test]
async fn connect_missing_socket_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("no-such.sock");
    let endpoint = format!("unix://{}", sock.display());
    let err = connect(&endpoint).await.unwrap_err();
    match &err {
        ConnectError::Connect { path, .. } => assert_eq!(path, &sock),
        other => panic!("wrong error: {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&sock.display().to_string()), "{text}");
    // The OS reason is carried into the message, not just "transport error".
    assert!(text.contains("No such file"), "{text}");
}

/// A minimal RuntimeService (only Version; the rest are the generated
/// UNIMPLEMENTED stubs) served on a Unix socket, reached through `connect`.
#[tokio::test]
async fn connect_and_call_in_process_server() {
    use runtime::v1::runtime_service_client::RuntimeServiceClient;
    use runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    use tokio_stream::wrappers::UnixListenerStream;

    struct Fake;
    #[tonic::async_trait]
    impl RuntimeService for Fake {
        async fn version(
            &self,
            req: tonic::Request<VersionRequest>,
        ) -> Result<tonic::Response<VersionResponse>, tonic::Status> {
            Ok(tonic::Response::new(VersionResponse {
                version: req.into_inner().version,
                runtime_name: "fake".into(),
                runtime_version: "0.0.1".into(),
                runtime_api_version: "v1".into(),
            }))
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(Fake))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let channel = connect(sock.to_str().unwrap()).await.unwrap();
    let mut client = RuntimeServiceClient::new(channel);
    let v = client
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "v1");
    assert_eq!(v.runtime_name, "fake");
    let status = client.status(StatusRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
