//! `-info`: the shim's `RuntimeInfo` (containerd's `api/types/introspection.proto`) on
//! stdout. containerd 2 asks every runtime handler's shim for it and reads the OCI
//! `features` document in it: that is how the CRI plugin learns a handler can run user
//! namespaces (`linux.namespaces` has `user` and `linux.mountExtensions.idmap` is
//! enabled), which the kubelet needs before it runs a `hostUsers: false` pod.
//!
//! The message is four fields, written with `protobuf`'s coded stream rather than with
//! generated code (containerd-shim-protos does not carry this file).

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use protobuf::CodedOutputStream;

use crate::runtime::Runtime;

/// The type URL containerd registers for the OCI features document (JSON).
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// `RuntimeInfo{name, version, options (echoed from stdin), features}`.
pub(crate) fn encode(options: &[u8], features_json: &[u8]) -> Result<Vec<u8>> {
    fn message(f: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut os = CodedOutputStream::vec(&mut buf);
        f(&mut os)?;
        os.flush()?;
        drop(os);
        Ok(buf)
    }
    let version = message(|os| os.write_string(1, env!("CARGO_PKG_VERSION")))?;
    let features = message(|os| {
        os.write_string(1, FEATURES_TYPE_URL)?;
        os.write_bytes(2, features_json)
    })?;
    message(|os| {
        os.write_string(1, "io.containerd.nodus.v2")?;
        os.write_bytes(2, &version)?;
        if !options.is_empty() {
            // stdin holds an encoded google.protobuf.Any: it is field 3 as it is.
            os.write_bytes(3, options)?;
        }
        os.write_bytes(4, &features)
    })
}

/// Reads the options from stdin, asks `nodus-runtime features`, prints the RuntimeInfo.
pub(crate) fn print() -> Result<()> {
    let mut options = Vec::new();
    std::io::stdin()
        .read_to_end(&mut options)
        .context("read the options on stdin")?;
    let features = Runtime::locate("default")?.run_plain(&["features"])?;
    if serde_json::from_slice::<serde_json::Value>(&features).is_err() {
        bail!("nodus-runtime features printed no JSON document");
    }
    let out = encode(&options, &features)?;
    std::io::stdout()
        .write_all(&out)
        .context("write the RuntimeInfo")
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedInputStream;

    /// (field number, bytes) of each length-delimited field of `buf`.
    fn fields(buf: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut is = CodedInputStream::from_bytes(buf);
        let mut out = vec![];
        while !is.eof().unwrap() {
            let tag = is.read_raw_varint32().unwrap();
            assert_eq!(tag & 7, 2, "length-delimited");
            out.push((tag >> 3, is.read_bytes().unwrap()));
        }
        out
    }

    #[test]
    fn runtime_info_carries_name_version_options_and_the_features_document() {
        let opts = b"\x0a\x03abc";
        let buf = encode(opts, br#"{"ociVersionMin":"1.0.0"}"#).unwrap();
        let f = fields(&buf);
        assert_eq!(f[0], (1, b"io.containerd.nodus.v2".to_vec()));
        assert_eq!(
            fields(&f[1].1),
            vec![(1, env!("CARGO_PKG_VERSION").as_bytes().to_vec())]
        );
        assert_eq!(f[2], (3, opts.to_vec()));
        assert_eq!(
            fields(&f[3].1),
            vec![
                (1, FEATURES_TYPE_URL.as_bytes().to_vec()),
                (2, br#"{"ociVersionMin":"1.0.0"}"#.to_vec())
            ]
        );
        // Without options the field is left out.
        assert_eq!(fields(&encode(&[], b"{}").unwrap()).len(), 3);
    }
}
