//! A node in API-server mode for end-to-end tests: a real etcd and kube-apiserver
//! (testkit's [`ControlPlane`]), containerd and our kubelet, all in the node's private
//! network namespace. The test thread enters that namespace too, so run these tests on a
//! current-thread runtime: every socket the test opens (kube client, kubectl) is there.
//!
//! The kubelet acts as `system:node:testnode` (Node authorizer + NodeRestriction); the test
//! talks as a cluster admin. What kube-controller-manager would make (the `default`
//! ServiceAccount, the `kube-root-ca.crt` configMap) the harness makes itself.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use nodus_testkit::{wait_until_async, ControlPlane};

use super::{containerd_options, Node, NODE};

pub struct ApiNode {
    // Field order is drop order: the kubelet and containerd go before the control plane.
    pub node: Node,
    pub cp: ControlPlane,
    pub client: kube::Client,
    pub admin_kubeconfig: PathBuf,
}

/// The admin client for a kubeconfig.
pub async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// The node's helpers (`wait_for`, `fail`...) on an API node: a failure shows the kubelet's
/// and the API server's logs.
impl std::ops::Deref for ApiNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl ApiNode {
    /// None (after the SKIP line) when no kube-apiserver binary is configured.
    pub async fn start(extra_config: &str, extra_args: &[&str]) -> Option<ApiNode> {
        Self::start_with(|_| extra_config.to_string(), extra_args).await
    }

    /// As `start`, with kubelet config lines that may name the control plane's files
    /// (certificates signed by its CA).
    pub async fn start_with(
        extra_config: impl FnOnce(&ControlPlane) -> String,
        extra_args: &[&str],
    ) -> Option<ApiNode> {
        Self::start_with_containerd("", extra_config, extra_args).await
    }

    /// As `start_with`, with `containerd_config` (TOML) added to containerd's configuration.
    pub async fn start_with_containerd(
        containerd_config: &str,
        extra_config: impl FnOnce(&ControlPlane) -> String,
        extra_args: &[&str],
    ) -> Option<ApiNode> {
        if nodus_testkit::apiserver::skip_without_apiserver() {
            return None;
        }
        let ctrd = containerd_in_node_netns(containerd_config).await;
        let cp = ControlPlane::start().expect("control plane");
        let admin_kubeconfig = cp.admin_kubeconfig().expect("admin kubeconfig");
        let node_kubeconfig = cp.node_kubeconfig(NODE).expect("node kubeconfig");
        let client = client(&admin_kubeconfig).await;
        prepare_namespace(&client, "default", &cp.ca_pem()).await;
        let mut args = vec![format!("--kubeconfig={}", node_kubeconfig.display())];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = Node::on(ctrd, &extra_config(&cp), &args);
        node.other_logs
            .push(("kube-apiserver", cp.dir().join("kube-apiserver.log")));
        Some(ApiNode {
            node,
            cp,
            client,
            admin_kubeconfig,
        })
    }

    /// A node whose kubelet has no kubeconfig yet: it bootstraps one with kubeadm's bootstrap
    /// token `abcdef.0123456789abcdef` (`--bootstrap-kubeconfig`, `--cert-dir` pki/ under
    /// the node's directory, `--kubeconfig` kubelet.conf there). The control plane has what
    /// `kubeadm init` makes for it: the token Secret, the node-bootstrapper binding, the
    /// auto-approval bindings when `auto_approve`, and kube-controller-manager's CSR
    /// controllers (`kcm_args` added). The kubelet config gets `extra_config`. None (after a
    /// SKIP line) without the binaries.
    pub async fn start_bootstrapping(
        auto_approve: bool,
        kcm_args: &[&str],
        extra_config: impl FnOnce(&ControlPlane) -> String,
    ) -> Option<ApiNode> {
        if nodus_testkit::apiserver::skip_without_apiserver() {
            return None;
        }
        let ctrd = containerd_in_node_netns("").await;
        let mut cp = ControlPlane::start_with(nodus_testkit::apiserver::ControlPlaneOptions {
            bootstrap_tokens: true,
            ..Default::default()
        })
        .expect("control plane");
        cp.start_csr_controllers(kcm_args)
            .expect("kube-controller-manager")?;
        let admin_kubeconfig = cp.admin_kubeconfig().expect("admin kubeconfig");
        let client = client(&admin_kubeconfig).await;
        prepare_namespace(&client, "default", &cp.ca_pem()).await;
        bootstrap_objects(&client, auto_approve).await;
        let boot = cp.dir().join("bootstrap-kubelet.conf");
        std::fs::write(
            &boot,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: tls-bootstrap-token-user\n  user:\n    token: {BOOTSTRAP_TOKEN}\n\
                 contexts:\n- name: tls-bootstrap-token-user@kubernetes\n  context:\n    cluster: kubernetes\n    user: tls-bootstrap-token-user\n\
                 current-context: tls-bootstrap-token-user@kubernetes\n",
                cp.url(),
                cp.ca_path().display()
            ),
        )
        .unwrap();
        let dir = ctrd.dir().to_path_buf();
        let args = [
            format!("--kubeconfig={}", dir.join("kubelet.conf").display()),
            format!("--bootstrap-kubeconfig={}", boot.display()),
            format!("--cert-dir={}", dir.join("pki").display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = Node::on(ctrd, &extra_config(&cp), &args);
        node.other_logs
            .push(("kube-apiserver", cp.dir().join("kube-apiserver.log")));
        node.other_logs.push((
            "kube-controller-manager",
            cp.dir().join("kube-controller-manager.log"),
        ));
        Some(ApiNode {
            node,
            cp,
            client,
            admin_kubeconfig,
        })
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// kubectl as the cluster admin; panics when there is no kubectl.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let bin = nodus_testkit::apiserver::kubectl_binary()
            .expect("kubectl: run hack/kubectl.sh or set NODUS_KUBECTL");
        std::process::Command::new(bin)
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        if !out.status.success() {
            self.fail(&format!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a pod bound to the test node from YAML (nodeName is set here).
    pub async fn create_pod(&self, ns: &str, yaml: &str) -> Pod {
        let mut pod: Pod = serde_yaml::from_str(yaml).expect("pod yaml");
        pod.spec.as_mut().expect("spec").node_name = Some(NODE.into());
        self.pods(ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| self.fail(&format!("create pod: {e}")))
    }

    /// Runs `cmd` in the pod's first running container through CRI ExecSync: (exit, stdout).
    pub async fn exec(&self, uid: &str, cmd: &[&str]) -> (i32, String) {
        use nodus_proto::runtime::v1 as cri;
        let mut rt = self.node.rt().await;
        let list = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let Some(c) = list.first() else {
            return (-1, String::new());
        };
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: c.id.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// The pod once `f` holds for it.
    pub async fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        f: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let api = self.pods(ns);
        self.wait_for(
            &format!("pod {ns}/{name}: {what}"),
            Duration::from_secs(90),
            || {
                let api = api.clone();
                let f = &f;
                async move { api.get_opt(name).await.ok().flatten().filter(|p| f(p)) }
            },
        )
        .await
    }
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn condition(p: &Pod, kind: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// A private containerd in the node's network namespace, which this test thread enters too.
async fn containerd_in_node_netns(extra_config: &str) -> nodus_testkit::PrivateContainerd {
    let mut opts = containerd_options();
    opts.in_node_netns = true;
    opts.extra_config += extra_config;
    let ctrd = nodus_testkit::PrivateContainerd::start(opts)
        .await
        .expect("private containerd");
    ctrd.node_netns()
        .enter_current_thread()
        .expect("enter the node netns");
    ctrd
}

/// kubeadm's default bootstrap token (id `abcdef`).
pub const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";

/// What `kubeadm init` makes for joining nodes: the bootstrap token's Secret, and the
/// bindings that let its group send node CSRs (and have them approved when `auto_approve`),
/// and nodes renew their own certificates.
async fn bootstrap_objects(client: &kube::Client, auto_approve: bool) {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let group = "system:bootstrappers:kubeadm:default-node-token";
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": "abcdef",
            "token-secret": "0123456789abcdef",
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": group,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .expect("bootstrap token secret");
    let mut bindings = vec![
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            group,
        ),
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
    ];
    if auto_approve {
        bindings.push((
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            group,
        ));
    }
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    for (name, role, group) in bindings {
        let b: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }))
        .unwrap();
        api.create(&PostParams::default(), &b)
            .await
            .unwrap_or_else(|e| panic!("clusterrolebinding {name}: {e}"));
    }
}

/// The `default` ServiceAccount and the `kube-root-ca.crt` configMap of a namespace.
pub async fn prepare_namespace(client: &kube::Client, ns: &str, ca_pem: &str) {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut account = ServiceAccount::default();
    account.metadata.name = Some("default".into());
    // The API server may be ready a moment before its admission chain is.
    wait_until_async(
        Duration::from_secs(10),
        "the default serviceaccount created",
        || async {
            match sa.create(&PostParams::default(), &account).await {
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                r => r.map(drop),
            }
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kube-root-ca.crt".into());
    cm.data = Some([("ca.crt".to_string(), ca_pem.to_string())].into());
    match cms.create(&PostParams::default(), &cm).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => panic!("create kube-root-ca.crt: {e}"),
    }
}
