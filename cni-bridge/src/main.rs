//! `nodus-bridge`: reads the CNI environment and configuration, runs the command, prints
//! the result (or the spec's error object and exits non-zero).

use std::io::{Read, Write};

use nodus_cni_bridge::config::{self, Env};
use nodus_cni_bridge::error::{code, CniError};
use nodus_cni_bridge::plugin;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = config::peek_version(&stdin)
        .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let outcome = (|| {
        read.map_err(|e| CniError::new(code::IO_FAILURE, format!("stdin: {e}")))?;
        let cmd = config::parse_command(std::env::var("CNI_COMMAND").ok().as_deref())?;
        let env = Env::load(cmd, |k| std::env::var(k).ok())?;
        plugin::run(cmd, &env, &stdin)
    })();
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
