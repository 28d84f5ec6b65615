//! Kubelet configuration: upstream command-line flags and the `KubeletConfiguration` file
//! (`kubelet.config.k8s.io/v1beta1`, camelCase fields), merged into one resolved [`Config`].
//! Flags override the file; the file overrides the defaults. Every refused value is
//! reported with the field (or flag) that carried it.

pub(crate) mod cipher_suites;
mod upstream_fields;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::cgroup_manager::CgroupDriver;
use crate::duration;

pub(crate) const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub(crate) const KIND: &str = "KubeletConfiguration";
pub(crate) const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {field}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

fn invalid(field: &str, value: impl ToString, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Command-line flags, named as upstream's kubelet names them.
#[derive(Debug, Default, Clone, Parser)]
#[command(
    name = "kubelet",
    about = "Nodus kubelet: runs static pods through a CRI runtime"
)]
pub struct Flags {
    /// Print the version and exit (upstream's `--version`; `--version=raw` as a struct;
    /// kubeadm's preflight runs `kubelet --version`).
    #[arg(long = "version", num_args = 0..=1, default_missing_value = "true", value_name = "true|false|raw")]
    pub version: Option<String>,
    /// Path to a KubeletConfiguration file (kubelet.config.k8s.io/v1beta1).
    #[arg(long = "config")]
    pub(crate) config: Option<PathBuf>,
    /// Directory of static pod manifests (staticPodPath).
    #[arg(long = "pod-manifest-path")]
    pub(crate) pod_manifest_path: Option<PathBuf>,
    /// URL serving static pods (staticPodURL), http only.
    #[arg(long = "manifest-url")]
    pub(crate) manifest_url: Option<String>,
    /// CRI endpoint (containerRuntimeEndpoint), e.g. unix:///run/containerd/containerd.sock.
    #[arg(long = "container-runtime-endpoint")]
    pub container_runtime_endpoint: Option<String>,
    /// Directory for kubelet files.
    #[arg(long = "root-dir", default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,
    /// Node name to use instead of the hostname.
    #[arg(long = "hostname-override")]
    pub(crate) hostname_override: Option<String>,
    /// Node IP address, reported as the pods' hostIP; dual-stack: one IPv4 and one IPv6,
    /// comma-separated, the first primary.
    #[arg(long = "node-ip")]
    pub node_ip: Option<String>,
    /// The node's ID in its cloud (spec.providerID), as `providerID`.
    #[arg(long = "provider-id")]
    pub(crate) provider_id: Option<String>,
    /// `external`: a cloud controller manager initializes the node (an `uninitialized`
    /// taint at registration; addresses it sets are kept).
    #[arg(long = "cloud-provider")]
    pub(crate) cloud_provider: Option<String>,
    /// Log verbosity (0-10) as upstream's klog levels; RUST_LOG overrides it.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// Read-only HTTP port (readOnlyPort), 0 disables it.
    #[arg(long = "read-only-port")]
    pub read_only_port: Option<u16>,
    /// Healthz port (healthzPort), 0 disables it.
    #[arg(long = "healthz-port")]
    pub healthz_port: Option<u16>,
    /// Healthz bind address (healthzBindAddress).
    #[arg(long = "healthz-bind-address")]
    pub healthz_bind_address: Option<String>,
    /// Address the read-only server listens on (address).
    #[arg(long = "address")]
    pub address: Option<String>,
    /// Root cgroup for pods (cgroupRoot).
    #[arg(long = "cgroup-root")]
    pub cgroup_root: Option<String>,
    /// Cgroup driver (cgroupDriver); only cgroupfs is supported.
    #[arg(long = "cgroup-driver")]
    pub(crate) cgroup_driver: Option<String>,
    /// Unsafe sysctls pods may set, comma separated, `prefix*` allowed (allowedUnsafeSysctls).
    #[arg(long = "allowed-unsafe-sysctls", value_delimiter = ',')]
    pub(crate) allowed_unsafe_sysctls: Option<Vec<String>>,
    /// RuntimeDefault seccomp for containers that name no profile (seccompDefault).
    #[arg(long = "seccomp-default", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) seccomp_default: Option<bool>,
    /// Renew the client certificate through CSRs before it expires (rotateCertificates).
    #[arg(long = "rotate-certificates", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) rotate_certificates: Option<bool>,
    /// Directory for pod logs (podLogsDir).
    #[arg(long = "pod-logs-dir")]
    pub(crate) pod_logs_dir: Option<PathBuf>,
    /// The sandbox image; image GC never removes it.
    #[arg(long = "pod-infra-container-image")]
    pub(crate) pod_infra_container_image: Option<String>,
    /// Deprecated upstream (1.24, gone in 1.27): only `remote` (a CRI endpoint) was left;
    /// kubeadm 1.20 to 1.26 still writes `--container-runtime=remote` in kubeadm-flags.env.
    #[arg(long = "container-runtime")]
    pub(crate) container_runtime: Option<String>,
    /// Dockershim's network plugin (gone with it in 1.24; kubeadm passed `cni` for Docker).
    /// Accepted with a warning: the runtime's CNI set-up is what runs.
    #[arg(long = "network-plugin")]
    pub(crate) network_plugin: Option<String>,
    /// The resolver configuration pods inherit (resolvConf); kubeadm passes it where
    /// systemd-resolved runs.
    #[arg(long = "resolv-conf")]
    pub(crate) resolv_conf: Option<PathBuf>,
    /// Dead containers kept per container name (upstream's
    /// --maximum-dead-containers-per-container, maxPerPodContainer).
    #[arg(long = "maximum-dead-containers-per-container")]
    pub(crate) maximum_dead_containers_per_container: Option<u32>,
    /// kubeconfig of the API server; without it the kubelet runs standalone.
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig whose identity (a bootstrap token) requests the client certificate when
    /// the --kubeconfig file does not exist or its certificate expired (TLS bootstrap).
    #[arg(long = "bootstrap-kubeconfig")]
    pub(crate) bootstrap_kubeconfig: Option<PathBuf>,
    /// Register the node with the API server (registerNode).
    #[arg(long = "register-node", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) register_node: Option<bool>,
    /// Labels added when registering the node: `key=value,key2=value2`.
    #[arg(long = "node-labels")]
    pub(crate) node_labels: Option<String>,
    /// Taints the node registers with: `key=value:Effect,key2:Effect`.
    #[arg(long = "register-with-taints")]
    pub(crate) register_with_taints: Option<String>,
    /// Resources reserved for Kubernetes daemons (kubeReserved): `cpu=100m,memory=100Mi`.
    #[arg(long = "kube-reserved")]
    pub(crate) kube_reserved: Option<String>,
    /// Resources reserved for the system (systemReserved): `cpu=100m,memory=100Mi`.
    #[arg(long = "system-reserved")]
    pub(crate) system_reserved: Option<String>,
    /// How often the node status is computed (nodeStatusUpdateFrequency).
    #[arg(long = "node-status-update-frequency")]
    pub(crate) node_status_update_frequency: Option<String>,
    /// The authenticated HTTPS port (port), 0 disables it.
    #[arg(long = "port")]
    pub port: Option<u16>,
    /// Serving certificate of the authenticated port (tlsCertFile).
    #[arg(long = "tls-cert-file")]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// Its private key (tlsPrivateKeyFile).
    #[arg(long = "tls-private-key-file")]
    pub(crate) tls_private_key_file: Option<PathBuf>,
    /// Where the self-signed serving certificate is kept when none is given.
    #[arg(long = "cert-dir")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// CA bundle that client certificates are verified against (authentication.x509.clientCAFile).
    #[arg(long = "client-ca-file")]
    pub(crate) client_ca_file: Option<PathBuf>,
    /// Allow anonymous requests (authentication.anonymous.enabled).
    #[arg(long = "anonymous-auth", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) anonymous_auth: Option<bool>,
    /// Bearer tokens through TokenReview (authentication.webhook.enabled).
    #[arg(long = "authentication-token-webhook", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) authentication_token_webhook: Option<bool>,
    /// AlwaysAllow or Webhook (authorization.mode).
    #[arg(long = "authorization-mode")]
    pub(crate) authorization_mode: Option<String>,
    /// Minimum TLS version: VersionTLS12 or VersionTLS13 (tlsMinVersion).
    #[arg(long = "tls-min-version")]
    pub(crate) tls_min_version: Option<String>,
    /// Comma-separated cipher suites, Go names (tlsCipherSuites).
    #[arg(long = "tls-cipher-suites")]
    pub(crate) tls_cipher_suites: Option<String>,
}

/// `userNamespaces` of a KubeletConfiguration.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserNamespacesConfig {
    /// Host IDs given to each pod with `hostUsers: false` (a multiple of 65536).
    pub(crate) ids_per_pod: Option<i64>,
}

/// `authentication` of a KubeletConfiguration.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthenticationConfig {
    pub(crate) x509: Option<X509Authentication>,
    pub(crate) webhook: Option<WebhookAuthentication>,
    pub(crate) anonymous: Option<AnonymousAuthentication>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct X509Authentication {
    #[serde(rename = "clientCAFile")]
    pub(crate) client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookAuthentication {
    pub(crate) enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    pub(crate) cache_ttl: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnonymousAuthentication {
    pub(crate) enabled: Option<bool>,
}

/// `authorization` of a KubeletConfiguration.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthorizationConfig {
    pub(crate) mode: Option<String>,
    pub(crate) webhook: Option<WebhookAuthorization>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookAuthorization {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub(crate) cache_authorized_ttl: Option<String>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub(crate) cache_unauthorized_ttl: Option<String>,
}

/// How the authenticated port decides who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorizationMode {
    AlwaysAllow,
    Webhook,
}

/// The resolved settings of the authenticated port.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    /// Where the self-signed certificate lives when no file is given.
    pub(crate) cert_dir: PathBuf,
    /// `serverTLSBootstrap`: the serving certificate comes from a kubelet-serving CSR (and
    /// is renewed the same way), in place of the files or the self-signed one.
    pub(crate) tls_bootstrap: bool,
    pub(crate) min_version: Option<String>,
    pub(crate) cipher_suites: Vec<String>,
    pub(crate) client_ca_file: Option<PathBuf>,
    pub(crate) anonymous: bool,
    pub(crate) webhook_authn: bool,
    pub(crate) webhook_authn_ttl: Duration,
    pub(crate) authorization: AuthorizationMode,
    pub(crate) authz_allowed_ttl: Duration,
    pub(crate) authz_denied_ttl: Duration,
}

impl Config {
    /// The node's IPs from `--node-ip`, the primary first.
    pub fn node_ips(&self) -> Vec<IpAddr> {
        self.node_ip
            .into_iter()
            .chain(self.secondary_node_ip)
            .collect()
    }
}

impl ServerTls {
    /// `serverTLSBootstrap`: the serving certificate comes from the cluster.
    pub fn tls_bootstrap(&self) -> bool {
        self.tls_bootstrap
    }
}

/// The `KubeletConfiguration` file, as far as this kubelet understands it. As upstream, it
/// is decoded leniently: fields it does not know are named in a warning (upstream logs its
/// strict decoding error and goes on), never fatal; a bad value of a known field is an
/// error naming the field.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KubeletConfiguration {
    pub(crate) api_version: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) static_pod_path: Option<PathBuf>,
    #[serde(rename = "staticPodURL")]
    pub(crate) static_pod_url: Option<String>,
    pub(crate) file_check_frequency: Option<String>,
    pub(crate) http_check_frequency: Option<String>,
    pub(crate) sync_frequency: Option<String>,
    pub(crate) container_runtime_endpoint: Option<String>,
    pub(crate) pod_logs_dir: Option<PathBuf>,
    pub(crate) cgroup_root: Option<String>,
    pub(crate) cgroup_driver: Option<String>,
    pub(crate) max_pods: Option<i64>,
    pub(crate) read_only_port: Option<i64>,
    pub(crate) healthz_port: Option<i64>,
    pub(crate) healthz_bind_address: Option<String>,
    pub(crate) address: Option<String>,
    pub(crate) port: Option<i64>,
    pub(crate) resolv_conf: Option<PathBuf>,
    #[serde(rename = "clusterDNS")]
    pub(crate) cluster_dns: Option<Vec<String>>,
    pub(crate) cluster_domain: Option<String>,
    pub(crate) seccomp_default: Option<bool>,
    pub(crate) user_namespaces: Option<UserNamespacesConfig>,
    pub(crate) rotate_certificates: Option<bool>,
    pub(crate) allowed_unsafe_sysctls: Option<Vec<String>>,
    pub(crate) container_log_max_size: Option<String>,
    pub(crate) container_log_max_files: Option<i64>,
    pub(crate) container_log_monitor_interval: Option<String>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub(crate) image_gc_high_threshold_percent: Option<i64>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub(crate) image_gc_low_threshold_percent: Option<i64>,
    #[serde(rename = "imageMinimumGCAge")]
    pub(crate) image_minimum_gc_age: Option<String>,
    pub(crate) register_node: Option<bool>,
    pub(crate) register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
    pub(crate) kube_reserved: Option<std::collections::BTreeMap<String, String>>,
    pub(crate) system_reserved: Option<std::collections::BTreeMap<String, String>>,
    pub(crate) eviction_hard: Option<std::collections::BTreeMap<String, String>>,
    pub(crate) node_status_update_frequency: Option<String>,
    pub(crate) node_status_report_frequency: Option<String>,
    pub(crate) node_lease_duration_seconds: Option<i64>,
    /// Upstream's name is `podsPerCore`; `maxPodsPerCore` is this kubelet's older spelling.
    #[serde(alias = "podsPerCore")]
    pub(crate) max_pods_per_core: Option<i64>,
    #[serde(rename = "providerID")]
    pub(crate) provider_id: Option<String>,
    pub(crate) authentication: Option<AuthenticationConfig>,
    pub(crate) authorization: Option<AuthorizationConfig>,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_private_key_file: Option<PathBuf>,
    #[serde(rename = "serverTLSBootstrap")]
    pub(crate) server_tls_bootstrap: Option<bool>,
    pub(crate) tls_min_version: Option<String>,
    pub(crate) tls_cipher_suites: Option<Vec<String>>,
    pub(crate) enable_system_log_handler: Option<bool>,
    pub(crate) enable_debugging_handlers: Option<bool>,
    /// Paths of the fields the decoding ignored (`a.b` for nested ones).
    #[serde(skip)]
    pub(crate) ignored: Vec<String>,
}

impl KubeletConfiguration {
    /// Parses the YAML (or JSON) text of a configuration file.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut ignored = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        // serde_ignored writes `?` for each Option on the way: drop those segments.
        let mut cfg: KubeletConfiguration = serde_ignored::deserialize(de, |p| {
            let path = p.to_string();
            let parts: Vec<&str> = path.split('.').filter(|s| *s != "?").collect();
            ignored.push(parts.join("."));
        })
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.ignored = ignored;
        if let Some(v) = &cfg.api_version {
            if v != API_VERSION {
                return Err(invalid("apiVersion", v, format!("expected {API_VERSION}")));
            }
        }
        if let Some(k) = &cfg.kind {
            if k != KIND {
                return Err(invalid("kind", k, format!("expected {KIND}")));
            }
        }
        Ok(cfg)
    }
}

/// The resolved configuration the kubelet runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub static_pod_path: Option<PathBuf>,
    pub static_pod_url: Option<String>,
    pub(crate) file_check_frequency: Duration,
    pub(crate) http_check_frequency: Duration,
    pub(crate) sync_frequency: Duration,
    pub container_runtime_endpoint: String,
    pub(crate) pod_logs_dir: PathBuf,
    /// Absolute cgroup under which pod cgroups are made (`<cgroupRoot>/kubepods/pod<uid>`).
    pub cgroup_root: String,
    /// `cgroupDriver`: cgroupfs (default) or systemd (slices; cgroupRoot must be `/`).
    pub cgroup_driver: CgroupDriver,
    pub(crate) max_pods: u32,
    /// 0 disables the read-only server (upstream's default; set it to serve `GET /pods`).
    pub read_only_port: u16,
    pub healthz_port: u16,
    pub healthz_bind_address: IpAddr,
    pub address: IpAddr,
    /// The authenticated kubelet API (HTTPS, default 10250; 0 disables it).
    pub port: u16,
    pub root_dir: PathBuf,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    /// The other family's address of a dual-stack `--node-ip`.
    pub(crate) secondary_node_ip: Option<IpAddr>,
    /// `providerID` / `--provider-id`: the Node's spec.providerID.
    pub(crate) provider_id: Option<String>,
    /// `--cloud-provider=external`.
    pub(crate) external_cloud_provider: bool,
    pub(crate) resolv_conf: PathBuf,
    /// `clusterDNS`, `clusterDomain` and whether `resolvConf` was set empty.
    pub(crate) dns: crate::network::dns::ClusterDns,
    /// `seccompDefault`: RuntimeDefault for containers that name no seccomp profile.
    pub(crate) seccomp_default: bool,
    /// `userNamespaces.idsPerPod`: host IDs per pod with `hostUsers: false`.
    pub(crate) userns_ids_per_pod: u32,
    /// `rotateCertificates`: the client certificate of a bootstrapped kubeconfig is renewed
    /// through CSRs before it expires.
    pub(crate) rotate_certificates: bool,
    /// `allowedUnsafeSysctls`: names and `prefix*` patterns pods may set beyond the safe set.
    pub(crate) allowed_unsafe_sysctls: Vec<String>,
    /// Rotate a container's log above this many bytes (default 10Mi).
    pub(crate) container_log_max_size: u64,
    /// What the configuration file had that this kubelet ignores, one line per kind, to be
    /// logged at start.
    pub warnings: Vec<String>,
    /// Keep this many log files per container, the live one included (default 5).
    pub(crate) container_log_max_files: u32,
    /// How often logs are checked for rotation (default 10s).
    pub(crate) container_log_monitor_interval: Duration,
    /// Image GC runs when the image filesystem is fuller than this (default 85).
    pub(crate) image_gc_high_threshold_percent: u8,
    /// ... and frees down to this (default 80).
    pub(crate) image_gc_low_threshold_percent: u8,
    /// Images unused for less than this are kept (default 2m).
    pub(crate) image_minimum_gc_age: Duration,
    /// The sandbox image, never removed by image GC.
    pub(crate) pod_infra_container_image: String,
    /// Dead containers kept per container name (default 1).
    pub(crate) max_per_pod_container: u32,
    /// The API server's kubeconfig (`--kubeconfig`); None: standalone.
    pub kubeconfig: Option<PathBuf>,
    /// `--bootstrap-kubeconfig`: makes `kubeconfig` by TLS bootstrap when needed.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Register the Node object (default true).
    pub(crate) register_node: bool,
    /// Labels the node registers with (`--node-labels`).
    pub(crate) node_labels: std::collections::BTreeMap<String, String>,
    /// Taints the node registers with.
    pub(crate) register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// kubeReserved and systemReserved, resource name -> quantity.
    pub(crate) kube_reserved: std::collections::BTreeMap<String, String>,
    pub(crate) system_reserved: std::collections::BTreeMap<String, String>,
    /// Hard eviction thresholds (signal -> quantity or percentage), upstream's defaults.
    pub(crate) eviction_hard: std::collections::BTreeMap<String, String>,
    /// How often the node status is computed and posted when it changed (default 10s).
    pub(crate) node_status_update_frequency: Duration,
    /// Post the node status at least this often even unchanged (default 5m).
    pub(crate) node_status_report_frequency: Duration,
    /// The node Lease's duration (default 40 s; renewed every quarter of it).
    pub(crate) node_lease_duration_seconds: i32,
    /// The authenticated port's TLS, authentication and authorization.
    pub server: ServerTls,
    /// `/logs/`: the node's log files (default off here; upstream defaults on).
    pub(crate) enable_system_log_handler: bool,
    /// exec, attach, portForward, containerLogs, run (default on, as upstream).
    pub(crate) enable_debugging_handlers: bool,
}

/// Upstream's default hard eviction thresholds.
pub(crate) fn default_eviction_hard() -> std::collections::BTreeMap<String, String> {
    [
        ("memory.available", "100Mi"),
        ("nodefs.available", "10%"),
        ("nodefs.inodesFree", "5%"),
        ("imagefs.available", "15%"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            static_pod_path: None,
            static_pod_url: None,
            file_check_frequency: Duration::from_secs(20),
            http_check_frequency: Duration::from_secs(20),
            sync_frequency: Duration::from_secs(60),
            container_runtime_endpoint: DEFAULT_RUNTIME_ENDPOINT.into(),
            pod_logs_dir: "/var/log/pods".into(),
            cgroup_root: "/".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            max_pods: 110,
            read_only_port: 0,
            healthz_port: 10248,
            healthz_bind_address: IpAddr::from([127, 0, 0, 1]),
            address: IpAddr::from([0, 0, 0, 0]),
            port: 10250,
            root_dir: "/var/lib/kubelet".into(),
            node_name: String::new(),
            node_ip: None,
            secondary_node_ip: None,
            provider_id: None,
            external_cloud_provider: false,
            resolv_conf: "/etc/resolv.conf".into(),
            dns: Default::default(),
            seccomp_default: false,
            userns_ids_per_pod: 65536,
            rotate_certificates: false,
            allowed_unsafe_sysctls: Vec::new(),
            container_log_max_size: 10 << 20,
            warnings: Vec::new(),
            container_log_max_files: 5,
            container_log_monitor_interval: Duration::from_secs(10),
            image_gc_high_threshold_percent: 85,
            image_gc_low_threshold_percent: 80,
            image_minimum_gc_age: Duration::from_secs(120),
            pod_infra_container_image: "registry.k8s.io/pause:3.10".into(),
            max_per_pod_container: 1,
            kubeconfig: None,
            bootstrap_kubeconfig: None,
            register_node: true,
            node_labels: Default::default(),
            register_with_taints: Vec::new(),
            kube_reserved: Default::default(),
            system_reserved: Default::default(),
            eviction_hard: default_eviction_hard(),
            node_status_update_frequency: Duration::from_secs(10),
            node_status_report_frequency: Duration::from_secs(300),
            node_lease_duration_seconds: 40,
            server: ServerTls {
                cert_file: None,
                key_file: None,
                cert_dir: "/var/lib/kubelet/pki".into(),
                tls_bootstrap: false,
                min_version: None,
                cipher_suites: Vec::new(),
                client_ca_file: None,
                anonymous: false,
                webhook_authn: false,
                webhook_authn_ttl: Duration::from_secs(120),
                authorization: AuthorizationMode::AlwaysAllow,
                authz_allowed_ttl: Duration::from_secs(300),
                authz_denied_ttl: Duration::from_secs(30),
            },
            enable_system_log_handler: false,
            enable_debugging_handlers: true,
        }
    }
}

fn parse_duration(field: &str, value: &str) -> Result<Duration, ConfigError> {
    duration::parse(value).map_err(|e| invalid(field, value, e.reason))
}

/// A duration of the file: as upstream's defaulting, zero (what kubeadm writes for unset,
/// `0s`) keeps the default.
fn file_duration(field: &str, value: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = parse_duration(field, value)?;
    Ok(if d.is_zero() { default } else { d })
}

fn parse_port(field: &str, value: i64) -> Result<u16, ConfigError> {
    u16::try_from(value).map_err(|_| invalid(field, value, "must be between 0 and 65535"))
}

/// `--node-ip`: one address, or one IPv4 and one IPv6 comma-separated (dual-stack).
fn parse_node_ips(value: &str) -> Result<(Option<IpAddr>, Option<IpAddr>), ConfigError> {
    let ips: Vec<IpAddr> = value
        .split(',')
        .map(|v| parse_ip("--node-ip", v.trim()))
        .collect::<Result<_, _>>()?;
    match ips[..] {
        [ip] => Ok((Some(ip), None)),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok((Some(a), Some(b))),
        [_, _] => Err(invalid(
            "--node-ip",
            value,
            "dual-stack --node-ip must have one IPv4 and one IPv6 address",
        )),
        _ => Err(invalid(
            "--node-ip",
            value,
            "at most two addresses (dual-stack)",
        )),
    }
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(field, value, "not an IP address"))
}

/// `key=value,key2=value2` (as `--node-labels`, `--kube-reserved`).
fn parse_map(
    field: &str,
    value: &str,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| invalid(field, item, "expected key=value"))?;
        if k.trim().is_empty() {
            return Err(invalid(field, item, "empty key"));
        }
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// `--register-with-taints`: `key=value:Effect` or `key:Effect`, comma separated.
fn parse_taints(
    field: &str,
    value: &str,
) -> Result<Vec<k8s_openapi::api::core::v1::Taint>, ConfigError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kv, effect) = item
            .rsplit_once(':')
            .ok_or_else(|| invalid(field, item, "expected key=value:Effect"))?;
        let (key, val) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        let taint = k8s_openapi::api::core::v1::Taint {
            key: key.to_string(),
            value: val,
            effect: effect.to_string(),
            time_added: None,
        };
        check_taint(field, &taint)?;
        out.push(taint);
    }
    Ok(out)
}

fn check_taint(field: &str, t: &k8s_openapi::api::core::v1::Taint) -> Result<(), ConfigError> {
    if t.key.is_empty() {
        return Err(invalid(field, &t.key, "taint key must not be empty"));
    }
    if !matches!(
        t.effect.as_str(),
        "NoSchedule" | "PreferNoSchedule" | "NoExecute"
    ) {
        return Err(invalid(
            field,
            &t.effect,
            "taint effect must be one of NoSchedule, PreferNoSchedule, NoExecute",
        ));
    }
    Ok(())
}

/// Reserved resources: cpu, memory, ephemeral-storage, pid, each a valid quantity.
fn check_reserved(
    field: &str,
    m: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in m {
        if !matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage" | "pid") {
            return Err(invalid(
                &format!("{field}.{k}"),
                k,
                "supported resources: cpu, memory, ephemeral-storage, pid",
            ));
        }
        let n = crate::resources::parse_milli(v)
            .map_err(|e| invalid(&format!("{field}.{k}"), v, e.reason))?;
        if n < 0 {
            return Err(invalid(&format!("{field}.{k}"), v, "must not be negative"));
        }
    }
    Ok(())
}

fn check_eviction(
    field: &str,
    m: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in m {
        if !matches!(
            k.as_str(),
            "memory.available"
                | "nodefs.available"
                | "nodefs.inodesFree"
                | "imagefs.available"
                | "imagefs.inodesFree"
                | "pid.available"
        ) {
            return Err(invalid(
                &format!("{field}.{k}"),
                k,
                "unknown eviction signal",
            ));
        }
        let ok = match v.strip_suffix('%') {
            Some(p) => p.parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p)),
            None => crate::resources::parse_milli(v).is_ok_and(|n| n >= 0),
        };
        if !ok {
            return Err(invalid(
                &format!("{field}.{k}"),
                v,
                "must be a quantity or a percentage",
            ));
        }
    }
    Ok(())
}

fn authorization_mode(field: &str, v: &str) -> Result<AuthorizationMode, ConfigError> {
    match v {
        "AlwaysAllow" => Ok(AuthorizationMode::AlwaysAllow),
        "Webhook" => Ok(AuthorizationMode::Webhook),
        _ => Err(invalid(field, v, "supported values: AlwaysAllow, Webhook")),
    }
}

fn check_tls_version(field: &str, v: &str) -> Result<String, ConfigError> {
    match v {
        "VersionTLS12" | "VersionTLS13" => Ok(v.to_string()),
        "VersionTLS10" | "VersionTLS11" => Err(invalid(
            field,
            v,
            "TLS 1.0 and 1.1 are not supported (rustls); use VersionTLS12 or VersionTLS13",
        )),
        _ => Err(invalid(
            field,
            v,
            "supported values: VersionTLS12, VersionTLS13",
        )),
    }
}

fn check_cipher_suites(field: &str, v: &[String]) -> Result<Vec<String>, ConfigError> {
    for s in v {
        if cipher_suites::cipher_suite(s).is_none() {
            return Err(invalid(
                field,
                s,
                "not a supported cipher suite (the AEAD suites: TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}_GCM_SHA{256,384}, TLS_ECDHE_*_WITH_CHACHA20_POLY1305_SHA256, TLS_AES_*, TLS_CHACHA20_POLY1305_SHA256)",
            ));
        }
    }
    Ok(v.to_vec())
}

fn check_cgroup_driver(field: &str, value: &str) -> Result<CgroupDriver, ConfigError> {
    match value {
        "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
        "systemd" => Ok(CgroupDriver::Systemd),
        _ => Err(invalid(field, value, "supported values: cgroupfs, systemd")),
    }
}

fn normalize_cgroup_root(field: &str, value: &str) -> Result<String, ConfigError> {
    if !value.starts_with('/') {
        return Err(invalid(
            field,
            value,
            "must be an absolute cgroup path (cgroupfs driver)",
        ));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(invalid(field, value, "must not contain '..'"));
    }
    Ok(value.to_string())
}

fn check_endpoint(field: &str, value: &str) -> Result<String, ConfigError> {
    if value.starts_with("unix://") || value.starts_with('/') {
        Ok(value.to_string())
    } else {
        Err(invalid(
            field,
            value,
            "only unix sockets are supported (unix:///path or /path)",
        ))
    }
}

fn check_url(field: &str, value: &str) -> Result<String, ConfigError> {
    crate::sources::http::parse_url(value).map_err(|e| invalid(field, value, e))?;
    Ok(value.to_string())
}

/// Warnings for ignored fields: the ones nobody knows (upstream's strict decoding error
/// wording), then the upstream ones this kubelet does not implement.
fn ignored_field_warnings(ignored: &[String]) -> Vec<String> {
    // A nested field is ignored only inside a structure this kubelet decodes: a typo.
    let (known, unknown): (Vec<&String>, Vec<&String>) = ignored
        .iter()
        .partition(|p| !p.contains('.') && upstream_fields::is_upstream(p));
    let mut out = Vec::new();
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|p| format!("unknown field {p:?}"))
            .collect();
        out.push(format!(
            "KubeletConfiguration: strict decoding error: {} (ignored)",
            list.join(", ")
        ));
    }
    if !known.is_empty() {
        let list: Vec<&str> = known.iter().map(|p| p.as_str()).collect();
        out.push(format!(
            "KubeletConfiguration: fields not implemented by this kubelet, ignored: {}",
            list.join(", ")
        ));
    }
    out
}

/// The machine's hostname, lowercased, as upstream's default node name.
pub(crate) fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

impl Config {
    /// Resolves flags (and the file they name) into a configuration.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                KubeletConfiguration::parse(path, &text)?
            }
            None => KubeletConfiguration::default(),
        };
        Config::resolve(flags, &file)
    }

    /// Merges defaults, the file and the flags (in that order of precedence, lowest first).
    pub(crate) fn resolve(
        flags: &Flags,
        file: &KubeletConfiguration,
    ) -> Result<Config, ConfigError> {
        let mut c = Config {
            warnings: ignored_field_warnings(&file.ignored),
            ..Config::default()
        };
        if let Some(v) = &file.static_pod_path {
            c.static_pod_path = Some(v.clone());
        }
        if let Some(v) = &file.static_pod_url {
            c.static_pod_url = Some(check_url("staticPodURL", v)?);
        }
        if let Some(v) = &file.file_check_frequency {
            c.file_check_frequency =
                file_duration("fileCheckFrequency", v, c.file_check_frequency)?;
        }
        if let Some(v) = &file.http_check_frequency {
            c.http_check_frequency =
                file_duration("httpCheckFrequency", v, c.http_check_frequency)?;
        }
        if let Some(v) = &file.sync_frequency {
            c.sync_frequency = file_duration("syncFrequency", v, c.sync_frequency)?;
        }
        // kubeadm writes "" for "the default".
        if let Some(v) = file
            .container_runtime_endpoint
            .as_ref()
            .filter(|v| !v.is_empty())
        {
            c.container_runtime_endpoint = check_endpoint("containerRuntimeEndpoint", v)?;
        }
        if let Some(v) = &file.pod_logs_dir {
            if !v.is_absolute() {
                return Err(invalid(
                    "podLogsDir",
                    v.display(),
                    "must be an absolute path",
                ));
            }
            c.pod_logs_dir = v.clone();
        }
        if let Some(v) = &file.cgroup_root {
            c.cgroup_root = normalize_cgroup_root("cgroupRoot", v)?;
        }
        if let Some(v) = &file.cgroup_driver {
            c.cgroup_driver = check_cgroup_driver("cgroupDriver", v)?;
        }
        if let Some(v) = file.max_pods {
            c.max_pods = u32::try_from(v)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("maxPods", v, "must be a positive integer"))?;
        }
        if let Some(v) = file.read_only_port {
            c.read_only_port = parse_port("readOnlyPort", v)?;
        }
        if let Some(v) = file.healthz_port {
            c.healthz_port = parse_port("healthzPort", v)?;
        }
        if let Some(v) = &file.healthz_bind_address {
            c.healthz_bind_address = parse_ip("healthzBindAddress", v)?;
        }
        if let Some(v) = &file.address {
            c.address = parse_ip("address", v)?;
        }
        if let Some(v) = file.port {
            c.port = parse_port("port", v)?;
        }
        if let Some(v) = &file.resolv_conf {
            c.resolv_conf = v.clone();
            c.dns.no_resolv_conf = v.as_os_str().is_empty();
        }
        if let Some(v) = file.seccomp_default {
            c.seccomp_default = v;
        }
        if let Some(v) = file.user_namespaces.as_ref().and_then(|u| u.ids_per_pod) {
            c.userns_ids_per_pod = u32::try_from(v)
                .ok()
                .filter(|n| *n > 0 && n % 65536 == 0)
                .ok_or_else(|| {
                    invalid(
                        "userNamespaces.idsPerPod",
                        v,
                        "must be a positive multiple of 65536",
                    )
                })?;
        }
        if let Some(v) = file.rotate_certificates {
            c.rotate_certificates = v;
        }
        if let Some(v) = &file.allowed_unsafe_sysctls {
            c.allowed_unsafe_sysctls = v.clone();
        }
        for ip in file.cluster_dns.iter().flatten() {
            c.dns.servers.push(parse_ip("clusterDNS", ip)?.to_string());
        }
        if let Some(v) = &file.cluster_domain {
            let domain = v.trim_end_matches('.');
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if !domain.is_empty() && !domain.split('.').all(label_ok) {
                return Err(invalid("clusterDomain", v, "must be a DNS subdomain"));
            }
            c.dns.domain = domain.to_string();
        }
        if let Some(v) = &file.container_log_max_size {
            let bytes = crate::resources::parse_milli(v)
                .map_err(|e| invalid("containerLogMaxSize", v, e.reason))?
                / 1000;
            c.container_log_max_size = u64::try_from(bytes)
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| invalid("containerLogMaxSize", v, "must be positive"))?;
        }
        if let Some(v) = file.container_log_max_files {
            c.container_log_max_files = u32::try_from(v)
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| invalid("containerLogMaxFiles", v, "must be at least 2"))?;
        }
        if let Some(v) = &file.container_log_monitor_interval {
            c.container_log_monitor_interval = file_duration(
                "containerLogMonitorInterval",
                v,
                c.container_log_monitor_interval,
            )?;
            if c.container_log_monitor_interval < Duration::from_secs(1) {
                return Err(invalid(
                    "containerLogMonitorInterval",
                    v,
                    "must be at least 1s",
                ));
            }
        }
        let percent = |field: &str, v: i64| {
            u8::try_from(v)
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| invalid(field, v, "must be between 0 and 100"))
        };
        if let Some(v) = file.image_gc_high_threshold_percent {
            c.image_gc_high_threshold_percent = percent("imageGCHighThresholdPercent", v)?;
        }
        if let Some(v) = file.image_gc_low_threshold_percent {
            c.image_gc_low_threshold_percent = percent("imageGCLowThresholdPercent", v)?;
        }
        if c.image_gc_low_threshold_percent > c.image_gc_high_threshold_percent {
            return Err(invalid(
                "imageGCLowThresholdPercent",
                c.image_gc_low_threshold_percent,
                "must not be above imageGCHighThresholdPercent",
            ));
        }
        if let Some(v) = &file.image_minimum_gc_age {
            c.image_minimum_gc_age = file_duration("imageMinimumGCAge", v, c.image_minimum_gc_age)?;
        }

        if let Some(v) = file.register_node {
            c.register_node = v;
        }
        if let Some(v) = &file.register_with_taints {
            for t in v {
                check_taint("registerWithTaints", t)?;
            }
            c.register_with_taints = v.clone();
        }
        if let Some(v) = &file.kube_reserved {
            check_reserved("kubeReserved", v)?;
            c.kube_reserved = v.clone();
        }
        if let Some(v) = &file.system_reserved {
            check_reserved("systemReserved", v)?;
            c.system_reserved = v.clone();
        }
        if let Some(v) = &file.eviction_hard {
            check_eviction("evictionHard", v)?;
            // As upstream: a map given replaces the defaults.
            c.eviction_hard = v.clone();
        }
        if let Some(v) = &file.node_status_update_frequency {
            c.node_status_update_frequency = file_duration(
                "nodeStatusUpdateFrequency",
                v,
                c.node_status_update_frequency,
            )?;
        }
        if let Some(v) = &file.node_status_report_frequency {
            c.node_status_report_frequency = file_duration(
                "nodeStatusReportFrequency",
                v,
                c.node_status_report_frequency,
            )?;
        }
        if let Some(v) = file.node_lease_duration_seconds {
            c.node_lease_duration_seconds =
                i32::try_from(v).ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid("nodeLeaseDurationSeconds", v, "must be a positive integer")
                })?;
        }
        if let Some(v) = file.max_pods_per_core {
            if v < 0 {
                return Err(invalid("maxPodsPerCore", v, "must not be negative"));
            }
            let cores = std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1);
            if v > 0 && v * cores < c.max_pods as i64 {
                c.max_pods = (v * cores) as u32;
            }
        }
        for (field, d) in [
            ("nodeStatusUpdateFrequency", c.node_status_update_frequency),
            ("nodeStatusReportFrequency", c.node_status_report_frequency),
        ] {
            if d < Duration::from_secs(1) {
                return Err(invalid(field, format!("{d:?}"), "must be at least 1s"));
            }
        }

        if let Some(a) = &file.authentication {
            if let Some(p) = a.x509.as_ref().and_then(|x| x.client_ca_file.clone()) {
                c.server.client_ca_file = Some(p);
            }
            if let Some(w) = &a.webhook {
                if let Some(e) = w.enabled {
                    c.server.webhook_authn = e;
                }
                if let Some(t) = &w.cache_ttl {
                    c.server.webhook_authn_ttl = file_duration(
                        "authentication.webhook.cacheTTL",
                        t,
                        c.server.webhook_authn_ttl,
                    )?;
                }
            }
            if let Some(e) = a.anonymous.as_ref().and_then(|x| x.enabled) {
                c.server.anonymous = e;
            }
        }
        if let Some(a) = &file.authorization {
            if let Some(m) = &a.mode {
                c.server.authorization = authorization_mode("authorization.mode", m)?;
            }
            if let Some(w) = &a.webhook {
                if let Some(t) = &w.cache_authorized_ttl {
                    c.server.authz_allowed_ttl = file_duration(
                        "authorization.webhook.cacheAuthorizedTTL",
                        t,
                        c.server.authz_allowed_ttl,
                    )?;
                }
                if let Some(t) = &w.cache_unauthorized_ttl {
                    c.server.authz_denied_ttl = file_duration(
                        "authorization.webhook.cacheUnauthorizedTTL",
                        t,
                        c.server.authz_denied_ttl,
                    )?;
                }
            }
        }
        if let Some(v) = &file.tls_cert_file {
            c.server.cert_file = Some(v.clone());
        }
        if let Some(v) = &file.tls_private_key_file {
            c.server.key_file = Some(v.clone());
        }
        if let Some(v) = file.server_tls_bootstrap {
            c.server.tls_bootstrap = v;
        }
        if let Some(v) = &file.tls_min_version {
            c.server.min_version = Some(check_tls_version("tlsMinVersion", v)?);
        }
        if let Some(v) = &file.tls_cipher_suites {
            c.server.cipher_suites = check_cipher_suites("tlsCipherSuites", v)?;
        }
        if let Some(v) = file.enable_system_log_handler {
            c.enable_system_log_handler = v;
        }
        if let Some(v) = file.enable_debugging_handlers {
            c.enable_debugging_handlers = v;
        }

        // Flags override the file.
        if let Some(v) = flags.port {
            c.port = v;
        }
        if let Some(v) = &flags.tls_cert_file {
            c.server.cert_file = Some(v.clone());
        }
        if let Some(v) = &flags.tls_private_key_file {
            c.server.key_file = Some(v.clone());
        }
        if let Some(v) = &flags.client_ca_file {
            c.server.client_ca_file = Some(v.clone());
        }
        if let Some(v) = flags.anonymous_auth {
            c.server.anonymous = v;
        }
        if let Some(v) = flags.authentication_token_webhook {
            c.server.webhook_authn = v;
        }
        if let Some(v) = &flags.authorization_mode {
            c.server.authorization = authorization_mode("--authorization-mode", v)?;
        }
        if let Some(v) = &flags.tls_min_version {
            c.server.min_version = Some(check_tls_version("--tls-min-version", v)?);
        }
        if let Some(v) = &flags.tls_cipher_suites {
            let list: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            c.server.cipher_suites = check_cipher_suites("--tls-cipher-suites", &list)?;
        }
        if let Some(v) = &flags.kubeconfig {
            c.kubeconfig = Some(v.clone());
        }
        if let Some(v) = &flags.bootstrap_kubeconfig {
            if c.kubeconfig.is_none() {
                return Err(invalid(
                    "--bootstrap-kubeconfig",
                    v.display(),
                    "needs --kubeconfig (the file the bootstrap writes)",
                ));
            }
            c.bootstrap_kubeconfig = Some(v.clone());
        }
        if let Some(v) = flags.register_node {
            c.register_node = v;
        }
        if let Some(v) = &flags.node_labels {
            c.node_labels = parse_map("--node-labels", v)?;
        }
        if let Some(v) = &flags.register_with_taints {
            c.register_with_taints = parse_taints("--register-with-taints", v)?;
        }
        if let Some(v) = &flags.kube_reserved {
            c.kube_reserved = parse_map("--kube-reserved", v)?;
            check_reserved("--kube-reserved", &c.kube_reserved)?;
        }
        if let Some(v) = &flags.system_reserved {
            c.system_reserved = parse_map("--system-reserved", v)?;
            check_reserved("--system-reserved", &c.system_reserved)?;
        }
        if let Some(v) = &flags.node_status_update_frequency {
            c.node_status_update_frequency = parse_duration("--node-status-update-frequency", v)?;
        }
        if let Some(v) = &flags.pod_manifest_path {
            c.static_pod_path = Some(v.clone());
        }
        if let Some(v) = &flags.manifest_url {
            c.static_pod_url = Some(check_url("--manifest-url", v)?);
        }
        if let Some(v) = &flags.container_runtime_endpoint {
            c.container_runtime_endpoint = check_endpoint("--container-runtime-endpoint", v)?;
        }
        if let Some(v) = flags.read_only_port {
            c.read_only_port = v;
        }
        if let Some(v) = flags.healthz_port {
            c.healthz_port = v;
        }
        if let Some(v) = &flags.healthz_bind_address {
            c.healthz_bind_address = parse_ip("--healthz-bind-address", v)?;
        }
        if let Some(v) = &flags.address {
            c.address = parse_ip("--address", v)?;
        }
        if let Some(v) = &flags.cgroup_root {
            c.cgroup_root = normalize_cgroup_root("--cgroup-root", v)?;
        }
        if let Some(v) = &flags.cgroup_driver {
            c.cgroup_driver = check_cgroup_driver("--cgroup-driver", v)?;
        }
        if let Some(v) = &flags.pod_logs_dir {
            if !v.is_absolute() {
                return Err(invalid(
                    "--pod-logs-dir",
                    v.display(),
                    "must be an absolute path",
                ));
            }
            c.pod_logs_dir = v.clone();
        }
        if let Some(v) = &flags.pod_infra_container_image {
            c.pod_infra_container_image = v.clone();
        }
        match flags.container_runtime.as_deref() {
            None => {}
            Some("remote") => c.warnings.push(
                "--container-runtime has been deprecated: remote is the only valid value and \
                 the flag will be removed (upstream 1.27)"
                    .into(),
            ),
            Some(v) => {
                return Err(invalid(
                    "--container-runtime",
                    v,
                    "supported value: remote (a CRI runtime at --container-runtime-endpoint)",
                ))
            }
        }
        if let Some(v) = &flags.network_plugin {
            c.warnings.push(format!(
                "--network-plugin={v} is ignored: it configured dockershim, removed upstream in \
                 1.24; the container runtime sets up the pod network"
            ));
        }
        if let Some(v) = &flags.resolv_conf {
            c.resolv_conf = v.clone();
            c.dns.no_resolv_conf = v.as_os_str().is_empty();
        }
        if let Some(v) = flags.maximum_dead_containers_per_container {
            c.max_per_pod_container = v;
        }
        c.root_dir = flags.root_dir.clone();
        c.server.cert_dir = flags
            .cert_dir
            .clone()
            .unwrap_or_else(|| c.root_dir.join("pki"));
        if c.server.cert_file.is_some() != c.server.key_file.is_some() {
            return Err(invalid(
                "tlsCertFile",
                format!("{:?} / {:?}", c.server.cert_file, c.server.key_file),
                "tlsCertFile and tlsPrivateKeyFile go together",
            ));
        }
        if c.kubeconfig.is_none() && c.port != 0 && c.server.tls_bootstrap {
            return Err(invalid(
                "serverTLSBootstrap",
                "true",
                "needs --kubeconfig (the certificate signing request goes to the API server)",
            ));
        }
        // The webhooks ask the API server; upstream refuses them without a client too.
        if c.kubeconfig.is_none() && c.port != 0 {
            if c.server.authorization == AuthorizationMode::Webhook {
                return Err(invalid(
                    "authorization.mode",
                    "Webhook",
                    "needs --kubeconfig (SubjectAccessReview goes to the API server)",
                ));
            }
            if c.server.webhook_authn {
                return Err(invalid(
                    "authentication.webhook.enabled",
                    "true",
                    "needs --kubeconfig (TokenReview goes to the API server)",
                ));
            }
        }
        if let Some(v) = &flags.node_ip {
            (c.node_ip, c.secondary_node_ip) = parse_node_ips(v)?;
        }
        if let Some(v) = &file.provider_id {
            c.provider_id = Some(v.clone()).filter(|v| !v.is_empty());
        }
        if let Some(v) = &flags.provider_id {
            c.provider_id = Some(v.clone()).filter(|v| !v.is_empty());
        }
        match flags.cloud_provider.as_deref() {
            None | Some("") => {}
            Some("external") => c.external_cloud_provider = true,
            Some(other) => {
                return Err(invalid(
                    "--cloud-provider",
                    other,
                    "only \"external\" is supported (in-tree cloud providers are not)",
                ))
            }
        }
        if let Some(v) = &flags.allowed_unsafe_sysctls {
            c.allowed_unsafe_sysctls = v.clone();
        }
        if let Some(v) = flags.seccomp_default {
            c.seccomp_default = v;
        }
        if let Some(v) = flags.rotate_certificates {
            c.rotate_certificates = v;
        }
        if let Err(e) = crate::security::sysctl::Allowlist::new(&c.allowed_unsafe_sysctls) {
            return Err(invalid(
                "allowedUnsafeSysctls",
                c.allowed_unsafe_sysctls.join(","),
                e,
            ));
        }
        c.node_name = match &flags.hostname_override {
            Some(name) => {
                let name = name.trim().to_lowercase();
                if name.is_empty() {
                    return Err(invalid("--hostname-override", name, "must not be empty"));
                }
                name
            }
            None => default_node_name(),
        };
        // The systemd driver's slices hang from the root slice.
        if c.cgroup_driver == CgroupDriver::Systemd && c.cgroup_root != "/" {
            return Err(invalid(
                "cgroupRoot",
                &c.cgroup_root,
                "must be / with the systemd cgroup driver",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["kubelet"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).unwrap()
    }

    fn file(text: &str) -> Result<KubeletConfiguration, ConfigError> {
        KubeletConfiguration::parse(Path::new("/etc/kubelet.yaml"), text)
    }

    /// What kubeadm (1.36, `kubeadm init phase kubelet-start`) writes to
    /// /var/lib/kubelet/config.yaml, with the cgroupfs driver.
    const KUBEADM: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: cgroupfs
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: \"\"
cpuManagerReconcilePeriod: 0s
crashLoopBackOff: {}
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: \"0\"
    text:
      infoBufferSize: \"0\"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
";

    #[test]
    fn kubeadm_config_is_accepted_and_what_is_ignored_is_named() {
        let f = file(&format!(
            "{KUBEADM}fooBar: 1\nauthorization:\n  mode: Webhook\n  typo: x\n"
        ));
        // A duplicate key is a YAML error, as upstream's strict decoder says too.
        assert!(f.is_err());
        let f = file(&format!("{KUBEADM}fooBar: 1\n")).unwrap();
        assert_eq!(
            f.cluster_dns.as_deref(),
            Some(&["10.96.0.10".to_string()][..])
        );
        let c =
            Config::resolve(&flags(&["--kubeconfig=/etc/kubernetes/kubelet.conf"]), &f).unwrap();
        assert_eq!(c.dns.domain, "cluster.local");
        assert_eq!(c.dns.servers, ["10.96.0.10"]);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(
            c.warnings[0],
            "KubeletConfiguration: strict decoding error: unknown field \"fooBar\" (ignored)"
        );
        assert!(c.rotate_certificates);
        for field in [
            "volumeStatsAggPeriod",
            "logging",
            "memorySwap",
            "shutdownGracePeriod",
        ] {
            assert!(c.warnings[1].contains(field), "{field}: {}", c.warnings[1]);
        }
        assert!(
            !c.warnings[1].contains("clusterDNS"),
            "implemented: {}",
            c.warnings[1]
        );
    }

    #[test]
    fn a_bad_value_of_a_known_field_is_still_an_error() {
        let f = file("syncFrequency: soon\n").unwrap();
        let e = Config::resolve(&flags(&[]), &f).unwrap_err().to_string();
        assert!(e.contains("syncFrequency") && e.contains("soon"), "{e}");
        let e = file("maxPods: many\n").unwrap_err().to_string();
        assert!(e.contains("maxPods"), "{e}");
        let f = file("clusterDNS: [ten]\n").unwrap();
        let e = Config::resolve(&flags(&[]), &f).unwrap_err().to_string();
        assert!(e.contains("clusterDNS") && e.contains("ten"), "{e}");
    }

    #[test]
    fn defaults_match_upstream() {
        let c =
            Config::resolve(&flags(&["--hostname-override", "n1"]), &Default::default()).unwrap();
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!(c.http_check_frequency, Duration::from_secs(20));
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.container_runtime_endpoint, DEFAULT_RUNTIME_ENDPOINT);
        assert_eq!(c.pod_logs_dir, PathBuf::from("/var/log/pods"));
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.read_only_port, 0);
        assert_eq!(c.healthz_port, 10248);
        assert_eq!(c.healthz_bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.node_name, "n1");
    }

    #[test]
    fn file_is_read_and_flags_override_it() {
        let f = file(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: /etc/kubernetes/manifests\nfileCheckFrequency: 1m30s\n\
             syncFrequency: 10s\nreadOnlyPort: 10255\ncgroupRoot: /nodus\n\
             cgroupDriver: cgroupfs\nmaxPods: 30\npodLogsDir: /tmp/logs\n\
             containerRuntimeEndpoint: unix:///run/x.sock\nhealthzBindAddress: 0.0.0.0\n",
        )
        .unwrap();
        let c = Config::resolve(&flags(&["--hostname-override", "Node-A"]), &f).unwrap();
        assert_eq!(
            c.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(c.file_check_frequency, Duration::from_secs(90));
        assert_eq!(c.sync_frequency, Duration::from_secs(10));
        assert_eq!(c.read_only_port, 10255);
        assert_eq!(c.cgroup_root, "/nodus");
        assert_eq!(c.max_pods, 30);
        assert_eq!(c.container_runtime_endpoint, "unix:///run/x.sock");
        assert_eq!(c.node_name, "node-a");

        let c = Config::resolve(
            &flags(&[
                "--pod-manifest-path",
                "/m",
                "--container-runtime-endpoint",
                "unix:///y.sock",
                "--read-only-port",
                "0",
                "--hostname-override",
                "n",
                "--node-ip",
                "10.0.0.1",
            ]),
            &f,
        )
        .unwrap();
        assert_eq!(c.static_pod_path.as_deref(), Some(Path::new("/m")));
        assert_eq!(c.container_runtime_endpoint, "unix:///y.sock");
        assert_eq!(c.read_only_port, 0);
        assert_eq!(c.node_ip.unwrap().to_string(), "10.0.0.1");
    }

    fn err_text(text: &str) -> String {
        match file(text) {
            Err(e) => e.to_string(),
            Ok(f) => Config::resolve(&flags(&["--hostname-override", "n"]), &f)
                .unwrap_err()
                .to_string(),
        }
    }

    #[test]
    fn kubelet_api_settings_from_file_and_flags() {
        let f = file(
            "port: 10250\ntlsCertFile: /p/c.crt\ntlsPrivateKeyFile: /p/c.key\n\
             tlsMinVersion: VersionTLS13\ntlsCipherSuites: [TLS_AES_128_GCM_SHA256]\n\
             authentication:\n  x509: {clientCAFile: /p/ca.crt}\n  webhook: {enabled: true, cacheTTL: 30s}\n\
             \x20 anonymous: {enabled: true}\nauthorization:\n  mode: Webhook\n\
             \x20 webhook: {cacheAuthorizedTTL: 1m, cacheUnauthorizedTTL: 5s}\n\
             enableSystemLogHandler: true\nenableDebuggingHandlers: false\n",
        )
        .unwrap();
        let c = Config::resolve(
            &flags(&[
                "--hostname-override",
                "n",
                "--kubeconfig",
                "/k",
                "--anonymous-auth=false",
            ]),
            &f,
        )
        .unwrap();
        let s = &c.server;
        assert_eq!(s.cert_file.as_deref(), Some(Path::new("/p/c.crt")));
        assert_eq!(s.client_ca_file.as_deref(), Some(Path::new("/p/ca.crt")));
        assert_eq!(s.min_version.as_deref(), Some("VersionTLS13"));
        assert_eq!(s.cipher_suites, ["TLS_AES_128_GCM_SHA256"]);
        assert!(
            s.webhook_authn && !s.anonymous,
            "the flag wins over the file"
        );
        assert_eq!(s.webhook_authn_ttl, Duration::from_secs(30));
        assert_eq!(s.authorization, AuthorizationMode::Webhook);
        assert_eq!(
            (s.authz_allowed_ttl, s.authz_denied_ttl),
            (Duration::from_secs(60), Duration::from_secs(5))
        );
        assert!(c.enable_system_log_handler && !c.enable_debugging_handlers);
        // Defaults: AlwaysAllow, no anonymous, the cert dir under the root dir.
        let c =
            Config::resolve(&flags(&["--hostname-override", "n"]), &Default::default()).unwrap();
        assert_eq!(c.port, 10250);
        assert_eq!(c.server.authorization, AuthorizationMode::AlwaysAllow);
        assert!(!c.server.anonymous && !c.enable_system_log_handler);
        assert_eq!(c.server.cert_dir, c.root_dir.join("pki"));
    }

    #[test]
    fn bad_kubelet_api_settings_name_the_field() {
        let e = err_text("authorization: {mode: RBAC}\n");
        assert!(
            e.contains("authorization.mode") && e.contains("RBAC"),
            "{e}"
        );
        let e = err_text("authorization: {mode: Webhook}\n");
        assert!(
            e.contains("authorization.mode") && e.contains("--kubeconfig"),
            "{e}"
        );
        let e = err_text("authentication: {webhook: {enabled: true}}\n");
        assert!(e.contains("authentication.webhook.enabled"), "{e}");
        let e = err_text("tlsMinVersion: VersionTLS10\n");
        assert!(
            e.contains("tlsMinVersion") && e.contains("VersionTLS10"),
            "{e}"
        );
        let e = err_text("tlsCipherSuites: [TLS_RSA_WITH_RC4_128_SHA]\n");
        assert!(
            e.contains("tlsCipherSuites") && e.contains("TLS_RSA_WITH_RC4_128_SHA"),
            "{e}"
        );
        let e = err_text("tlsCertFile: /only/the/cert\n");
        assert!(e.contains("tlsCertFile"), "{e}");
        let e = err_text("authentication: {webhook: {cacheTTL: soon}}\n");
        assert!(
            e.contains("authentication.webhook.cacheTTL") && e.contains("soon"),
            "{e}"
        );
        let f = file("authentication: {x509: {clientCaFile: /x}}\n").unwrap();
        let c = Config::resolve(&flags(&["--hostname-override", "n"]), &f).unwrap();
        assert_eq!(
            c.warnings,
            ["KubeletConfiguration: strict decoding error: unknown field \"authentication.x509.clientCaFile\" (ignored)"]
        );
    }

    #[test]
    fn the_systemd_driver_is_read_from_the_file_and_the_flag() {
        let f = file("cgroupDriver: systemd\n").unwrap();
        let c = Config::resolve(&flags(&["--hostname-override", "n"]), &f).unwrap();
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        let f = file("cgroupDriver: systemd\n").unwrap();
        let c = Config::resolve(
            &flags(&["--hostname-override", "n", "--cgroup-driver", "cgroupfs"]),
            &f,
        )
        .unwrap();
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs, "the flag wins");
        let c = Config::resolve(&flags(&["--hostname-override", "n"]), &file("").unwrap());
        assert_eq!(c.unwrap().cgroup_driver, CgroupDriver::Cgroupfs);
    }

    #[test]
    fn bad_values_name_field_and_value() {
        let e = err_text("fileCheckFrequency: 20x\n");
        assert!(e.contains("fileCheckFrequency") && e.contains("20x"), "{e}");
        let e = err_text("syncFrequency: \"10\"\n");
        assert!(e.contains("syncFrequency") && e.contains("\"10\""), "{e}");
        let e = err_text("cgroupDriver: openrc\n");
        assert!(
            e.contains("cgroupDriver") && e.contains("openrc") && e.contains("systemd"),
            "{e}"
        );
        let e = err_text("cgroupDriver: systemd\ncgroupRoot: /nodus\n");
        assert!(e.contains("cgroupRoot") && e.contains("/nodus"), "{e}");
        let e = err_text("readOnlyPort: 70000\n");
        assert!(e.contains("readOnlyPort") && e.contains("70000"), "{e}");
        let e = err_text("maxPods: 0\n");
        assert!(e.contains("maxPods"), "{e}");
        let e = err_text("cgroupRoot: relative/path\n");
        assert!(e.contains("cgroupRoot"), "{e}");
        let e = err_text("kind: Pod\n");
        assert!(e.contains("kind") && e.contains("Pod"), "{e}");
        let e = err_text("staticPodURL: https://x/pods\n");
        assert!(e.contains("staticPodURL"), "{e}");
        let e = err_text("healthzBindAddress: nowhere\n");
        assert!(
            e.contains("healthzBindAddress") && e.contains("nowhere"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_named_in_a_warning() {
        let f = file("staticPodPth: /x\n").unwrap();
        let c = Config::resolve(&flags(&["--hostname-override", "n"]), &f).unwrap();
        assert_eq!(c.static_pod_path, None);
        assert_eq!(
            c.warnings,
            ["KubeletConfiguration: strict decoding error: unknown field \"staticPodPth\" (ignored)"]
        );
    }

    #[test]
    fn the_flags_kubeadm_writes_are_accepted() {
        // kubeadm 1.20's kubeadm-flags.env, and 1.20's for Docker.
        let c = Config::resolve(
            &flags(&[
                "--container-runtime=remote",
                "--container-runtime-endpoint=/run/containerd/containerd.sock",
                "--resolv-conf=/run/systemd/resolve/resolv.conf",
                "--network-plugin=cni",
                "--pod-infra-container-image=k8s.gcr.io/pause:3.2",
                "--hostname-override",
                "n",
            ]),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            c.container_runtime_endpoint,
            "/run/containerd/containerd.sock"
        );
        assert_eq!(
            c.resolv_conf,
            PathBuf::from("/run/systemd/resolve/resolv.conf")
        );
        assert_eq!(c.pod_infra_container_image, "k8s.gcr.io/pause:3.2");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("--container-runtime has been deprecated"));
        assert!(c.warnings[1].contains("--network-plugin=cni is ignored"));
        let e = Config::resolve(
            &flags(&["--container-runtime=docker", "--hostname-override", "n"]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--container-runtime") && e.contains("docker"),
            "{e}"
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let e = Config::resolve(
            &flags(&["--cgroup-driver", "sysv", "--hostname-override", "n"]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--cgroup-driver") && e.contains("sysv"), "{e}");
        let e = Config::resolve(
            &flags(&["--node-ip", "x.y", "--hostname-override", "n"]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--node-ip") && e.contains("x.y"), "{e}");
        assert!(Flags::try_parse_from(["kubelet", "--read-only-port", "abc"]).is_err());
        let e = Config::resolve(
            &flags(&[
                "--bootstrap-kubeconfig",
                "/etc/kubernetes/boot.conf",
                "--hostname-override",
                "n",
            ]),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--bootstrap-kubeconfig")
                && e.contains("/etc/kubernetes/boot.conf")
                && e.contains("--kubeconfig"),
            "{e}"
        );
        let c = Config::resolve(
            &flags(&[
                "--bootstrap-kubeconfig=/b.conf",
                "--kubeconfig=/k.conf",
                "--hostname-override",
                "n",
            ]),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            c.bootstrap_kubeconfig.as_deref(),
            Some(Path::new("/b.conf"))
        );
        let c = Config::resolve(
            &flags(&[
                "--node-ip=10.0.0.1,fd00::1",
                "--provider-id=nodus://n",
                "--cloud-provider=external",
                "--hostname-override",
                "n",
            ]),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            c.node_ips(),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(c.provider_id.as_deref(), Some("nodus://n"));
        assert!(c.external_cloud_provider);
        let f = file("providerID: nodus://from-file\n").unwrap();
        let c = Config::resolve(&flags(&["--hostname-override", "n"]), &f).unwrap();
        assert_eq!(c.provider_id.as_deref(), Some("nodus://from-file"));
        for (args, field, value) in [
            (
                ["--node-ip", "10.0.0.1,10.0.0.2"],
                "--node-ip",
                "10.0.0.1,10.0.0.2",
            ),
            (
                ["--node-ip", "10.0.0.1,fd00::1,10.0.0.3"],
                "--node-ip",
                "fd00::1,10.0.0.3",
            ),
            (["--cloud-provider", "aws"], "--cloud-provider", "aws"),
        ] {
            let mut a = args.to_vec();
            a.extend(["--hostname-override", "n"]);
            let e = Config::resolve(&flags(&a), &Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains(value), "{e}");
        }
        let f = file("serverTLSBootstrap: true\n").unwrap();
        let e = Config::resolve(&flags(&["--hostname-override", "n"]), &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("serverTLSBootstrap") && e.contains("--kubeconfig"),
            "{e}"
        );
        let c = Config::resolve(
            &flags(&["--kubeconfig=/k.conf", "--hostname-override", "n"]),
            &f,
        )
        .unwrap();
        assert!(c.server.tls_bootstrap());
    }
}
