//! The CNI error object (spec section "Error") and the codes this plugin uses.

use serde::Serialize;

/// Well-known codes from the CNI spec, plus this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (here: no address left).
    pub const NOT_AVAILABLE: u32 = 50;
    /// No free address in a range set.
    pub const NO_ADDRESS: u32 = 100;
    /// A requested address is taken, outside every range, or the gateway.
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    /// `CNI_IFNAME` already exists in the container's network namespace.
    pub const IFNAME_TAKEN: u32 = 102;
    /// A netlink request failed.
    pub const NETLINK: u32 = 110;
    /// Running `nft` failed.
    pub const NFTABLES: u32 = 111;
    /// CHECK found the attachment different from its prevResult.
    pub const CHECK_FAILED: u32 = 112;
    /// The bridge name is taken by a link that is not a bridge, or its address conflicts.
    pub const BRIDGE_CONFLICT: u32 = 113;
}

/// An error as the CNI spec prints it: code, short message, optional details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self::new(code::IO_FAILURE, format!("{what}: {err}"))
    }

    /// The JSON object printed on stdout for this error.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v.to_string()
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
