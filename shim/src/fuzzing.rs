//! Entry point of the fuzz target `shim_task` (compiled only with `--cfg fuzzing`): a task
//! API request as containerd sends it, decoded and checked as the handlers do before the
//! shim acts on it. The first byte picks the method, the rest is the protobuf payload. A
//! panic is the finding; errors are the expected answer to bad input.

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;

use crate::task;

/// Decodes `payload` as `T`, or gives up (the ttrpc server answers undecodable payloads
/// itself).
fn decode<T: Message>(payload: &[u8]) -> Option<T> {
    T::parse_from_bytes(payload).ok()
}

fn stdio(stdin: &str, stdout: &str, stderr: &str) {
    for uri in [stdin, stdout, stderr] {
        let _ = crate::stdio::fifo_path(uri);
    }
}

pub fn task_request(data: &[u8]) {
    let Some((&method, payload)) = data.split_first() else {
        return;
    };
    match method % 6 {
        0 => {
            if let Some(req) = decode::<api::CreateTaskRequest>(payload) {
                if task::check_create(&req).is_ok() {
                    stdio(&req.stdin, &req.stdout, &req.stderr);
                    for m in &req.rootfs {
                        let _ = nodus_runtime::rootfs::parse_options(&m.options);
                    }
                }
            }
        }
        1 => {
            if let Some(req) = decode::<api::ExecProcessRequest>(payload) {
                if let Ok(spec) = task::check_exec(&req) {
                    stdio(&req.stdin, &req.stdout, &req.stderr);
                    let _ = nodus_runtime::spec::parse_json::<oci_spec::runtime::Process>(
                        &spec,
                        "exec spec",
                    );
                }
            }
        }
        2 => {
            if let Some(req) = decode::<api::UpdateTaskRequest>(payload) {
                let _ = task::check_update(&req);
            }
        }
        3 => {
            if let Some(req) = decode::<api::KillRequest>(payload) {
                let _ = task::signal_number(req.signal);
                let _ = task::check_name("id", &req.id);
            }
        }
        4 => {
            if let Some(req) = decode::<api::ResizePtyRequest>(payload) {
                let _ = task::check_name("id", &req.id);
            }
        }
        _ => {
            if let Some(req) = decode::<api::DeleteRequest>(payload) {
                let _ = task::check_name("exec_id", &req.exec_id);
            }
        }
    }
}
