//! `nodus-images`: builds our local OCI image archives and imports them into containerd.
//!
//! ```text
//! nodus-images build  [--out DIR]
//! nodus-images import [--out DIR] [--address /run/containerd/containerd.sock] [--namespace k8s.io]
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nodus_testkit::images::{self, ImageInputs};

#[derive(Parser)]
#[command(version, about = "Build and import the local pause and busybox images")]
struct Cli {
    /// Where the archives are written.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Debian's static busybox.
    #[arg(long, global = true, default_value = "/bin/busybox")]
    busybox: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the archives and print their manifest digests.
    Build,
    /// Build, then import into containerd.
    Import {
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = cli.out.unwrap_or_else(images::default_out_dir);
    let inputs = ImageInputs {
        busybox: cli.busybox,
        ..ImageInputs::default()
    };
    let built = images::build_all(&inputs, &out).context("building images")?;
    for image in &built {
        println!(
            "{}\t{}\t{}",
            image.name,
            image.manifest_digest,
            image.archive.display()
        );
    }
    if let Cmd::Import { address, namespace } = cli.command {
        images::import(&address, &namespace, &built)
            .with_context(|| format!("importing into {}", address.display()))?;
        println!("imported {} images into namespace {namespace}", built.len());
    }
    Ok(())
}
