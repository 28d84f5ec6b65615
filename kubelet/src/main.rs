//! `kubelet`: parses flags and the config file, then runs the kubelet until SIGTERM/SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use nodus_kubelet::config::{Config, Flags};
use nodus_kubelet::kubelet::Kubelet;
use nodus_kubelet::server;

fn init_tracing(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("nodus_kubelet={level},kubelet={level},warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.root_dir)
        .with_context(|| format!("creating --root-dir {}", cfg.root_dir.display()))?;
    nodus_kubelet::resources::check_cgroup_root(&cfg.cgroup_root)?;
    nodus_kubelet::cgroup_manager::set_driver(cfg.cgroup_driver)?;
    tokio::select! {
        () = nodus_kubelet::certificate::bootstrap(&cfg) => {}
        () = shutdown_signal() => return Ok(()),
    }
    let kubelet = Kubelet::new(cfg.clone()).await?;
    let shared = kubelet.shared();
    if cfg.healthz_port != 0 {
        let l = server::bind(
            SocketAddr::new(cfg.healthz_bind_address, cfg.healthz_port),
            "healthz",
        )
        .await?;
        tokio::spawn(server::serve(l, shared.clone(), server::Port::Healthz));
    }
    if cfg.read_only_port != 0 {
        let l = server::bind(
            SocketAddr::new(cfg.address, cfg.read_only_port),
            "the read-only port",
        )
        .await?;
        tokio::spawn(server::serve(l, shared.clone(), server::Port::ReadOnly));
    }
    if cfg.port != 0 {
        let ips: Vec<std::net::IpAddr> = cfg.node_ip.into_iter().collect();
        let tls = match (cfg.server.tls_bootstrap(), kubelet.api_client()) {
            (true, Some(client)) => {
                nodus_kubelet::certificate::serving::server_config(&cfg, client)?
            }
            (true, None) => anyhow::bail!(
                "serverTLSBootstrap needs --kubeconfig (the CSR goes to the API server)"
            ),
            (false, _) => server::tls::server_config(&cfg.server, &cfg.node_name, &ips)?,
        };
        let l = server::bind(SocketAddr::new(cfg.address, cfg.port), "the kubelet API").await?;
        let secure = std::sync::Arc::new(server::Secure {
            auth: server::auth::Auth::new(&cfg.server, &cfg.node_name, kubelet.api_client()),
            cfg: cfg.clone(),
        });
        tokio::spawn(server::serve_tls(l, tls, shared.clone(), secure));
    }
    tracing::info!(
        node = %cfg.node_name,
        endpoint = %cfg.container_runtime_endpoint,
        static_pod_path = ?cfg.static_pod_path,
        static_pod_url = ?cfg.static_pod_url,
        kubeconfig = ?cfg.kubeconfig,
        read_only_port = cfg.read_only_port,
        port = cfg.port,
        healthz_port = cfg.healthz_port,
        "kubelet starting"
    );
    kubelet.run(shutdown_signal()).await;
    Ok(())
}

fn main() {
    let flags = Flags::parse();
    if let Some(v) = flags.version.as_deref().filter(|v| *v != "false") {
        let version = nodus_kubelet::version::KUBELET_VERSION;
        match v {
            "true" => println!("Kubernetes {version}"),
            "raw" => println!(
                "version.Info{{GitVersion:\"{version}\", Platform:\"linux/{}\"}}",
                nodus_kubelet::version::go_arch()
            ),
            _ => {
                eprintln!("kubelet: --version {v:?}: supported values: true, false, raw");
                std::process::exit(2);
            }
        }
        return;
    }
    let cfg = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubelet: {e}");
            std::process::exit(1);
        }
    };
    init_tracing(flags.verbosity);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubelet: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("kubelet: {e:#}");
        std::process::exit(1);
    }
}
