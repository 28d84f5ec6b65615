//! The ttrpc task service (`containerd.task.v2.Task`, also served as v3): each handler
//! decodes and checks its request, calls the service, and turns an error into the ttrpc
//! status containerd sees.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::types::task::ProcessInfo;

use crate::container::CreateRequest;
use crate::error::{Error, Result};
use crate::service::Service;
use crate::stdio::{self, StdioPaths};

type TtrpcResult<T> = ttrpc::Result<T>;

/// Names used in file names must be plain (containerd's IDs are).
pub(crate) fn check_name(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 256
        || value == "."
        || value == ".."
        || value.contains(['/', '\0'])
    {
        return Err(Error::InvalidArgument(format!(
            "{field} {value:?} is not a valid identifier"
        )));
    }
    Ok(())
}

/// What Create must carry before anything is made: a plain ID and a bundle; no checkpoint.
pub(crate) fn check_create(req: &api::CreateTaskRequest) -> Result<()> {
    check_name("id", &req.id)?;
    if req.bundle.is_empty() {
        return Err(Error::InvalidArgument("bundle is empty".into()));
    }
    if !req.checkpoint.is_empty() {
        return Err(Error::Unimplemented(
            "restoring from a checkpoint is not supported".into(),
        ));
    }
    Ok(())
}

/// An Exec's plain exec ID and its spec, which must be JSON (the runtime reads it as a
/// runtime-spec Process when the exec starts).
pub(crate) fn check_exec(req: &api::ExecProcessRequest) -> Result<Vec<u8>> {
    check_name("exec_id", &req.exec_id)?;
    let spec = req
        .spec
        .as_ref()
        .map(|a| a.value.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::InvalidArgument("exec spec is empty".into()))?;
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&spec) {
        return Err(Error::InvalidArgument(format!(
            "exec spec is not runtime-spec Process JSON: {e}"
        )));
    }
    Ok(spec)
}

/// An Update's resources: runtime-spec LinuxResources JSON, refused here when it is not
/// (rather than by the runtime command it is piped to).
pub(crate) fn check_update(req: &api::UpdateTaskRequest) -> Result<Vec<u8>> {
    let resources = req
        .resources
        .as_ref()
        .map(|a| a.value.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::InvalidArgument("update: resources are empty".into()))?;
    nodus_runtime::spec::parse_json::<oci_spec::runtime::LinuxResources>(&resources, "resources")
        .map_err(|e| Error::InvalidArgument(format!("update: {e}")))?;
    Ok(resources)
}

/// A signal number as Kill carries it, if it is one.
pub(crate) fn signal_number(signal: u32) -> Result<i32> {
    i32::try_from(signal)
        .ok()
        .filter(|s| (1..=64).contains(s))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("signal {signal} is not a valid signal number"))
        })
}

/// The ttrpc handlers take `&self`; the service's work needs the `Arc` (threads, weak refs).
pub(crate) struct TaskService(pub(crate) Arc<Service>);

impl containerd_shim_protos::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::debug!(id = %req.id, bundle = %req.bundle, "create");
        check_create(&req)?;
        let pid = self.0.create(CreateRequest {
            id: &req.id,
            bundle: PathBuf::from(&req.bundle),
            rootfs: &req.rootfs,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        })?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, "start");
        let pid = self.0.start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.0.state(&req.id, &req.exec_id)?)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, signal = req.signal, all = req.all, "kill");
        let signal = signal_number(req.signal)?;
        self.0.kill(&req.id, &req.exec_id, signal, req.all)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        Ok(self.0.wait(&req.id, &req.exec_id)?)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, "delete");
        Ok(self.0.delete(&req.id, &req.exec_id)?)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = check_exec(&req)?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.0.add_exec(&req.id, &req.exec_id, paths, spec)?;
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        match self.0.console(&req.id, &req.exec_id)? {
            Some(m) => stdio::resize(&m, req.width, req.height).map_err(Error::Internal)?,
            None => {
                return Err(Error::FailedPrecondition(format!("{} has no terminal", req.id)).into())
            }
        }
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // stdin reaches the process through a pipe fed from the FIFO: containerd closing its
        // end of the FIFO already ends it with EOF.
        self.0.check_process(&req.id, &req.exec_id)?;
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = self.0.pids(&req.id)?;
        Ok(api::PidsResponse {
            processes: processes
                .into_iter()
                .map(|(pid, exec_id)| ProcessInfo {
                    pid,
                    info: exec_id.and_then(exec_details).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.0.pause(&req.id)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.0.resume(&req.id)?;
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = check_update(&req)?;
        self.0.update(&req.id, resources)?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(api::StatsResponse {
            stats: MessageField::some(self.0.stats(&req.id)?),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.0.task_pid(&req.id),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.0.shutdown_if_idle();
        Ok(api::Empty::default())
    }
}

/// An exec's process carries its exec ID (containerd.runc.v1.ProcessDetails, as runc's
/// shim reports them).
fn exec_details(exec_id: String) -> Option<Any> {
    let details = ProcessDetails {
        exec_id,
        ..Default::default()
    };
    Some(Any {
        type_url: "containerd.runc.v1.ProcessDetails".into(),
        value: details.write_to_bytes().ok()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_must_be_plain_names() {
        check_name("id", "abc-123_x.y").unwrap();
        let long = "a".repeat(257);
        for bad in ["", ".", "..", "a/b", "a\0b", long.as_str()] {
            assert!(
                matches!(check_name("id", bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn update_resources_must_be_linux_resources_json() {
        let req = |value: &[u8]| api::UpdateTaskRequest {
            id: "c1".into(),
            resources: MessageField::some(Any {
                value: value.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_update(&req(br#"{"pids":{"limit":10}}"#)).is_ok());
        for bad in [&b""[..], b"{not json", br#"{"pids":{"limit":"ten"}}"#] {
            assert!(
                matches!(check_update(&req(bad)), Err(Error::InvalidArgument(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn signals_are_1_to_64() {
        assert_eq!(signal_number(9).unwrap(), 9);
        assert_eq!(signal_number(64).unwrap(), 64);
        for bad in [0, 65, u32::MAX] {
            assert!(
                matches!(signal_number(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn exec_details_name_the_exec() {
        let any = exec_details("e1".into()).unwrap();
        assert_eq!(any.type_url, "containerd.runc.v1.ProcessDetails");
        let details = ProcessDetails::parse_from_bytes(&any.value).unwrap();
        assert_eq!(details.exec_id, "e1");
    }
}
