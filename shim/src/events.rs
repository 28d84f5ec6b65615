//! Publishing task events to containerd (`containerd.services.events.ttrpc.v1.Events/Forward`
//! on containerd's ttrpc socket). One thread sends them in order and retries while
//! containerd is away (e.g. restarting), so a handler never blocks on it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{topics, Client, EventsClient};

/// How long one event is retried before it is dropped (containerd restarts in ~1.5 s).
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// A task event of the kinds the shim publishes.
pub(crate) enum Event {
    Create(ev::TaskCreate),
    Start(ev::TaskStart),
    Exit(ev::TaskExit),
    Delete(ev::TaskDelete),
    ExecAdded(ev::TaskExecAdded),
    ExecStarted(ev::TaskExecStarted),
    Oom(ev::TaskOOM),
    Paused(ev::TaskPaused),
    Resumed(ev::TaskResumed),
}

impl Event {
    fn topic_and_any(self) -> (&'static str, Any) {
        // containerd's typeurl names events by their proto full name. Spelled out rather
        // than taken from the descriptor: building protobuf reflection costs memory.
        fn any<M: Message>(name: &str, m: M) -> Any {
            Any {
                type_url: format!("containerd.events.{name}"),
                value: m.write_to_bytes().unwrap_or_default(),
                ..Default::default()
            }
        }
        match self {
            Event::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, any("TaskCreate", e)),
            Event::Start(e) => (topics::TASK_START_EVENT_TOPIC, any("TaskStart", e)),
            Event::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, any("TaskExit", e)),
            Event::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, any("TaskDelete", e)),
            Event::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, any("TaskExecAdded", e)),
            Event::ExecStarted(e) => (
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                any("TaskExecStarted", e),
            ),
            Event::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, any("TaskOOM", e)),
            Event::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, any("TaskPaused", e)),
            Event::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, any("TaskResumed", e)),
        }
    }
}

/// The current time as a protobuf timestamp (events, exits and delete replies carry one).
pub(crate) fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Queue of events for the publishing thread.
pub(crate) struct Publisher {
    tx: Sender<Event>,
}

impl Publisher {
    pub(crate) fn start(ttrpc_address: String, namespace: String) -> std::io::Result<Publisher> {
        let (tx, rx) = channel();
        crate::thread::spawn("events", move || {
            publish_loop(rx, &ttrpc_address, &namespace)
        })?;
        Ok(Publisher { tx })
    }

    pub(crate) fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

fn publish_loop(rx: Receiver<Event>, address: &str, namespace: &str) {
    let mut client: Option<EventsClient> = None;
    for event in rx {
        let (topic, any) = event.topic_and_any();
        let request = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(now()).into(),
                namespace: namespace.to_string(),
                topic: topic.to_string(),
                event: Some(any).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + RETRY_FOR;
        loop {
            if client.is_none() {
                client =
                    Client::connect(&format!("unix://{}", address.trim_start_matches("unix://")))
                        .ok()
                        .map(EventsClient::new);
            }
            let sent = match &client {
                Some(c) => match c.forward(context::with_timeout(5_000_000_000), &request) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(topic, error = %e, "forward event");
                        client = None;
                        false
                    }
                },
                None => false,
            };
            if sent {
                break;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(topic, "event dropped: containerd unreachable at {address}");
                break;
            }
            std::thread::sleep(RETRY_EVERY);
        }
    }
}
