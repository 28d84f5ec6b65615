//! Error type of the runtime library.
//!
//! Every error carries enough context to name the field, path or operation that failed;
//! the CLI prints it as-is (and writes it to the runc-style JSON log).

use std::io;

/// Errors of the runtime library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with that id (the message contains "does not exist", which
    /// containerd's runc shim looks for).
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A container with that id already exists.
    #[error("container with id {0} already exists")]
    Exists(String),
    /// The container id is not usable as a directory name.
    #[error("invalid container id {0:?}: only [A-Za-z0-9_+.-] are allowed and it may not be \".\" or \"..\"")]
    InvalidId(String),
    /// config.json or a process/resources file is invalid; `field` names the JSON path.
    #[error("{field}: {msg}")]
    Config {
        /// JSON path of the offending field, e.g. `process.rlimits[0].type`.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The operation is not possible in the container's current state.
    #[error("{0}")]
    State(String),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

/// Result alias of the runtime library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A config error for `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// Attach context to io and nix errors.
pub trait Context<T> {
    /// Wrap the error with a description of the operation.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Io {
            context: what(),
            source: io::Error::from_raw_os_error(e as i32),
        })
    }
}
