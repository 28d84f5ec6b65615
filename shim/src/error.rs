//! The shim's error: what a task call failed with. The task service turns it into the
//! ttrpc status containerd sees (the variant is the gRPC code, the text the message).

use containerd_shim_protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else: a runtime command, a file, a syscall.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The container `id` or its exec `exec_id` (when not empty) is unknown.
    pub(crate) fn not_found(id: &str, exec_id: &str) -> Error {
        if exec_id.is_empty() {
            Error::NotFound(format!("container {id}: not found"))
        } else {
            Error::NotFound(format!("exec {exec_id} of container {id}: not found"))
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn variants_become_their_grpc_code_and_message() {
        assert_eq!(
            status_of(Error::not_found("c1", "")),
            (Code::NOT_FOUND, "container c1: not found".to_string())
        );
        assert_eq!(
            status_of(Error::not_found("c1", "e1")),
            (
                Code::NOT_FOUND,
                "exec e1 of container c1: not found".to_string()
            )
        );
        assert_eq!(
            status_of(Error::AlreadyExists("x".into())).0,
            Code::ALREADY_EXISTS
        );
        let inner = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(
            status_of(Error::Internal(inner)),
            (Code::INTERNAL, "outer: root cause".to_string())
        );
    }
}
