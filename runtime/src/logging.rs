//! A small `tracing` subscriber writing runc-style log lines.
//!
//! containerd's runc shim runs the runtime with `--log <bundle>/log.json --log-format json`
//! and reports the last `{"level":"error","msg":...}` line when a command fails, so the
//! format follows runc's (logrus) exactly: `{"level":"error","msg":"...","time":"..."}`,
//! or logrus' text form `time="..." level=error msg="..."`. Kept tiny on purpose: the
//! runtime starts for every container operation and startup time matters.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// logrus JSON: `{"level":..,"msg":..,"time":..}`.
    Json,
    /// logrus text: `time=".." level=.. msg=".."`.
    Text,
}

/// Writes events at or above `max` to a file or stderr.
pub struct RuncLogger {
    out: Mutex<Option<File>>,
    format: Format,
    max: Level,
}

impl RuncLogger {
    /// Log to `path` (appending; created if missing) or to stderr when `None`.
    pub fn new(path: Option<&Path>, format: Format, debug: bool) -> std::io::Result<Self> {
        let out = match path {
            Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(RuncLogger {
            out: Mutex::new(out),
            format,
            max: if debug { Level::DEBUG } else { Level::INFO },
        })
    }

    /// Whether the log goes to a file (so errors should also be printed to stderr).
    pub fn to_file(&self) -> bool {
        self.out.lock().map(|o| o.is_some()).unwrap_or(false)
    }

    /// Format one line.
    pub fn line(&self, level: &Level, msg: &str, extra: &[(String, String)]) -> String {
        let level = level.as_str().to_ascii_lowercase();
        let time = crate::util::rfc3339(SystemTime::now());
        match self.format {
            Format::Json => {
                let mut m = serde_json::Map::new();
                m.insert("level".into(), level.into());
                m.insert("msg".into(), msg.into());
                m.insert("time".into(), time.into());
                for (k, v) in extra {
                    m.insert(k.clone(), v.clone().into());
                }
                let mut s = serde_json::Value::Object(m).to_string();
                s.push('\n');
                s
            }
            Format::Text => {
                let mut s = format!("time={time:?} level={level} msg={msg:?}");
                for (k, v) in extra {
                    let _ = write!(s, " {k}={v:?}");
                }
                s.push('\n');
                s
            }
        }
    }

    fn write(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            match out.as_mut() {
                Some(f) => {
                    let _ = f.write_all(line.as_bytes());
                }
                None => {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
            }
        }
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

impl Subscriber for RuncLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        self.write(&self.line(event.metadata().level(), &f.msg, &f.extra));
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_runc_shaped() {
        let l = RuncLogger::new(None, Format::Json, false).unwrap();
        let line = l.line(&Level::ERROR, "boom \"x\"", &[]);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "boom \"x\"");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_line_is_logrus_shaped() {
        let l = RuncLogger::new(None, Format::Text, false).unwrap();
        let line = l.line(&Level::WARN, "careful", &[("pid".into(), "7".into())]);
        assert!(
            line.contains("level=warn msg=\"careful\" pid=\"7\""),
            "{line}"
        );
    }
}
