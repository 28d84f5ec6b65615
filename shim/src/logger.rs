//! A small `tracing` subscriber: one line per event (`level message key=value...`) on
//! stderr, which the shim points at the bundle's `log` FIFO that containerd reads.
//! (tracing-subscriber's formatter costs resident memory in every shim of every pod.)

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

pub(crate) struct StderrLogger {
    max: Level,
    next_span: AtomicU64,
}

impl StderrLogger {
    pub(crate) fn install(max: Level) {
        let logger = StderrLogger {
            max,
            next_span: AtomicU64::new(1),
        };
        let _ = tracing::subscriber::set_global_default(logger);
    }
}

struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line(format!(
            "level={} pid={}",
            event.metadata().level().as_str().to_ascii_lowercase(),
            std::process::id()
        ));
        event.record(&mut line);
        line.0.push('\n');
        // The FIFO is non-blocking: a full pipe drops the line rather than stall the shim.
        let _ = std::io::stderr().write_all(line.0.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
