//! The shim's command line, as containerd passes it: Go `flag` style (`-name value`,
//! `-name=value`, `--name value`, boolean `-debug`), then an optional action.

use anyhow::{bail, Result};

/// Parsed command line.
#[derive(Debug, Default, Clone)]
pub(crate) struct Flags {
    pub(crate) namespace: String,
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) publish_binary: String,
    pub(crate) bundle: Option<String>,
    pub(crate) socket: Option<String>,
    pub(crate) debug: bool,
    pub(crate) version: bool,
    /// `-info`: print the shim's RuntimeInfo (with the runtime's features) and exit.
    pub(crate) info: bool,
    /// `start`, `delete`, or none (serve).
    pub(crate) action: Option<String>,
}

impl Flags {
    pub(crate) fn parse(args: &[String]) -> Result<Flags> {
        let mut flags = Flags::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let Some(stripped) = arg.strip_prefix('-') else {
                if flags.action.is_some() {
                    bail!(
                        "unexpected argument {arg:?} after action {:?}",
                        flags.action
                    );
                }
                flags.action = Some(arg.clone());
                continue;
            };
            let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (stripped, None),
            };
            match name {
                "debug" | "v" | "version" | "info" => {
                    let on = match inline.as_deref() {
                        None | Some("true") | Some("1") => true,
                        Some("false") | Some("0") => false,
                        Some(other) => bail!("flag -{name}: bad boolean {other:?}"),
                    };
                    if name == "debug" {
                        flags.debug = on;
                    } else if name == "info" {
                        flags.info = on;
                    } else {
                        flags.version = on;
                    }
                }
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            let Some(v) = args.get(i) else {
                                bail!("flag -{name} needs a value");
                            };
                            i += 1;
                            v.clone()
                        }
                    };
                    match name {
                        "namespace" => flags.namespace = value,
                        "id" => flags.id = value,
                        "address" => flags.address = value,
                        "publish-binary" => flags.publish_binary = value,
                        "bundle" => flags.bundle = Some(value),
                        _ => flags.socket = Some(value),
                    }
                }
                other => bail!("unknown flag -{other}"),
            }
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Flags> {
        let args: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        Flags::parse(&args)
    }

    #[test]
    fn containerd_start_line() {
        let f = parse("-namespace k8s.io -address /run/c.sock -publish-binary /usr/bin/containerd -id abc -debug start").unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.address, "/run/c.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert_eq!(f.id, "abc");
        assert!(f.debug);
        assert_eq!(f.action.as_deref(), Some("start"));
    }

    #[test]
    fn equals_form_and_no_action() {
        let f = parse("--namespace=ns -id=x -bundle /b").unwrap();
        assert_eq!(f.namespace, "ns");
        assert_eq!(f.id, "x");
        assert_eq!(f.bundle.as_deref(), Some("/b"));
        assert!(f.action.is_none());
    }

    #[test]
    fn bad_input_is_named() {
        assert!(parse("-id").unwrap_err().to_string().contains("-id"));
        assert!(parse("-frobnicate 1")
            .unwrap_err()
            .to_string()
            .contains("frobnicate"));
        assert!(parse("start delete").is_err());
    }
}
