//! Container logs: reading CRI log files (`<RFC3339Nano> <stream> <P|F> <message>`, partial
//! lines joined) for `GET /containerLogs/{namespace}/{pod}/{container}` with `tailLines`,
//! `timestamps`, `previous`, `limitBytes` and `follow`; and the container log manager
//! (upstream `ContainerLogManager`): a log above `containerLogMaxSize` is renamed to
//! `<log>.<YYYYmmdd-HHMMSS>` and the runtime reopens it (`ReopenContainerLog`), keeping at
//! most `containerLogMaxFiles` files per container; older rotated files are gzipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use nodus_proto::runtime::v1 as cri;

use crate::kuberuntime::cri::Cri;
use crate::kuberuntime::labels;

/// One logical log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub(crate) timestamp: String,
    pub(crate) stream: String,
    pub(crate) message: String,
    /// The line never got its newline: the output ended in partial (`P`) records with no
    /// full (`F`) record after them (`printf NO-NEWLINE`). Rendered without a newline.
    pub(crate) partial: bool,
}

/// Parses CRI log text into lines, joining partial (`P`) records. Returns the lines and how
/// many bytes they used: an unterminated record, and partial records not yet followed by
/// their full one, stay unconsumed. With `at_end` (the log is complete: the container exited
/// or the reader takes a snapshot) those partial records form a last line without a newline.
pub fn parse(text: &str, at_end: bool) -> (Vec<LogLine>, usize) {
    let mut out = Vec::new();
    let mut pending: Option<LogLine> = None;
    let mut consumed = 0;
    let mut pos = 0;
    for raw in text.split_inclusive('\n') {
        pos += raw.len();
        if !raw.ends_with('\n') {
            break;
        }
        let line = raw.trim_end_matches('\n');
        let mut f = line.splitn(4, ' ');
        let (Some(ts), Some(stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            consumed = pos;
            continue;
        };
        let msg = f.next().unwrap_or("");
        let entry = pending.get_or_insert_with(|| LogLine {
            timestamp: ts.to_string(),
            stream: stream.to_string(),
            message: String::new(),
            partial: false,
        });
        entry.message.push_str(msg);
        if tag != "P" {
            out.extend(pending.take());
            consumed = pos;
        } else if at_end {
            // Consumed as far as this record; emitted below unless an F record completes it.
            consumed = pos;
        }
    }
    if at_end {
        if let Some(mut last) = pending {
            last.partial = true;
            out.push(last);
        }
    }
    (out, consumed)
}

/// A bad `GET /containerLogs` query parameter, or a container log that cannot be rotated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogsError {
    #[error("{param}: {value:?} is not a boolean")]
    NotBoolean { param: String, value: String },
    #[error("{param}: {value:?} is not a non-negative integer")]
    NotNonNegative { param: &'static str, value: String },
    #[error("{param}: {value:?} is not a positive integer")]
    NotPositive { param: &'static str, value: String },
    #[error("{param}: {value:?} is not an RFC 3339 time")]
    NotTime { param: &'static str, value: String },
    #[error("renaming {}: {source}", path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ReopenContainerLog: {0}")]
    Reopen(crate::kuberuntime::cri::CriError),
}

/// Options of `GET /containerLogs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub(crate) tail_lines: Option<usize>,
    pub(crate) timestamps: bool,
    pub(crate) previous: bool,
    pub(crate) follow: bool,
    pub(crate) limit_bytes: Option<usize>,
    /// `sinceSeconds` (counted back from the request) or `sinceTime` (RFC 3339): only lines
    /// written at or after it.
    pub(crate) since: Option<Timestamp>,
}

impl LogOptions {
    /// Parses the query string; a bad value is an error naming the parameter.
    pub(crate) fn from_query(q: &str) -> Result<LogOptions, LogsError> {
        let mut o = LogOptions::default();
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
            let flag = |v: &str| match v {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(LogsError::NotBoolean {
                    param: k.to_string(),
                    value: v.to_string(),
                }),
            };
            let positive = |param| LogsError::NotPositive {
                param,
                value: v.to_string(),
            };
            match k {
                "tailLines" => {
                    o.tail_lines = Some(v.parse().map_err(|_| LogsError::NotNonNegative {
                        param: "tailLines",
                        value: v.to_string(),
                    })?)
                }
                "limitBytes" => {
                    o.limit_bytes = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| positive("limitBytes"))?,
                    )
                }
                "sinceSeconds" => {
                    let secs: i64 = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| positive("sinceSeconds"))?;
                    o.since = Timestamp::now()
                        .checked_sub(SignedDuration::from_secs(secs))
                        .ok();
                }
                "sinceTime" => {
                    let t = percent_decode(v);
                    o.since = Some(t.parse().map_err(|_| LogsError::NotTime {
                        param: "sinceTime",
                        value: t.clone(),
                    })?);
                }
                "timestamps" => o.timestamps = flag(v)?,
                "previous" => o.previous = flag(v)?,
                "follow" => o.follow = flag(v)?,
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Whether a line was written at or after `since` (a line whose time does not parse is kept).
pub(crate) fn written_since(line: &LogLine, since: Timestamp) -> bool {
    line.timestamp
        .parse::<Timestamp>()
        .map_or(true, |t| t >= since)
}

fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// Formats lines for the client.
pub fn render(lines: &[LogLine], timestamps: bool) -> String {
    let mut s = String::new();
    for l in lines {
        if timestamps {
            s.push_str(&l.timestamp);
            s.push(' ');
        }
        s.push_str(&l.message);
        if !l.partial {
            s.push('\n');
        }
    }
    s
}

/// The log file of a pod's container: the newest instance, or the one before it
/// (`previous`). Err is (HTTP status, message).
pub(crate) async fn find_log(
    cri: &Cri,
    uid: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(String, String), (u16, String)> {
    let sel = std::collections::HashMap::from([
        (labels::POD_UID_LABEL.to_string(), uid.to_string()),
        (
            labels::CONTAINER_NAME_LABEL.to_string(),
            container.to_string(),
        ),
    ]);
    let mut list = cri
        .list_containers(sel)
        .await
        .map_err(|e| (500, e.to_string()))?;
    list.sort_by_key(|c| std::cmp::Reverse(labels::restart_count(&c.annotations)));
    let idx = usize::from(previous);
    let Some(c) = list.get(idx) else {
        let what = if previous {
            "previous terminated container"
        } else {
            "container"
        };
        return Err((
            400,
            format!("{what} {container:?} in pod {pod:?} not found"),
        ));
    };
    let st = cri
        .container_status(&c.id)
        .await
        .map_err(|e| (500, e.to_string()))?;
    Ok((st.log_path, c.id.clone()))
}

/// Reads what a log holds, applying tailLines and limitBytes.
pub(crate) fn read_all(path: &Path, o: &LogOptions) -> std::io::Result<(String, u64)> {
    let text = std::fs::read(path)?;
    let len = text.len() as u64;
    let text = String::from_utf8_lossy(&text);
    let (mut lines, _) = parse(&text, true);
    // As upstream: the last tailLines lines, of those the ones since the time asked.
    if let Some(n) = o.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    if let Some(since) = o.since {
        lines.retain(|l| written_since(l, since));
    }
    let mut out = render(&lines, o.timestamps);
    if let Some(limit) = o.limit_bytes {
        let mut cut = limit.min(out.len());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Ok((out, len))
}

/// Rotated files of `log` (plain and `.gz`), oldest first.
pub(crate) fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.starts_with(&prefix) && !n.ends_with(".tmp")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Rotates `log` of container `id` when it is larger than `max_size`, keeping
/// `max_files` files in all. Returns whether it rotated.
pub(crate) async fn rotate_if_needed(
    cri: &Cri,
    id: &str,
    log: &Path,
    max_size: u64,
    max_files: u32,
) -> Result<bool, LogsError> {
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if size < max_size {
        return Ok(false);
    }
    // Room for the file about to be rotated: keep max_files - 2 older ones.
    let rotated = rotated_files(log);
    let keep = max_files.saturating_sub(2) as usize;
    if rotated.len() > keep {
        for old in &rotated[..rotated.len() - keep] {
            if let Err(e) = std::fs::remove_file(old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot remove old rotated log");
            }
        }
    }
    let stamp =
        k8s_openapi::jiff::Timestamp::from_nanosecond(crate::container::now_nanos() as i128)
            .map(|t| t.strftime("%Y%m%d-%H%M%S").to_string())
            .unwrap_or_else(|_| "0".into());
    let mut target = PathBuf::from(format!("{}.{stamp}", log.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.{stamp}.{n:03}", log.display()));
        n += 1;
    }
    std::fs::rename(log, &target).map_err(|source| LogsError::Rename {
        path: log.to_path_buf(),
        source,
    })?;
    if let Err(e) = cri.reopen_container_log(id).await {
        // Put it back so the runtime's open file and the name agree again.
        let _ = std::fs::rename(&target, log);
        return Err(LogsError::Reopen(e));
    }
    tracing::debug!(container = %id, log = %log.display(), size, "rotated container log");
    // As upstream, every rotated file but the newest is kept gzip-compressed.
    for old in rotated_files(log) {
        if old == target || old.extension().is_some_and(|e| e == "gz") {
            continue;
        }
        if let Err(e) = compress(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot compress rotated log");
        }
    }
    Ok(true)
}

/// Replaces `path` by `path.gz` (written to a `.tmp` first, so a crash leaves no half file
/// under the final name).
fn compress(path: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let tmp = PathBuf::from(format!("{}.gz.tmp", path.display()));
    let mut input = std::fs::File::open(path)?;
    let out = std::fs::File::create(&tmp)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(path)
}

/// The log manager loop: every `interval`, rotates the logs of running containers.
pub(crate) async fn run_log_manager(cri: Cri, max_size: u64, max_files: u32, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(list) = cri.list_containers(Default::default()).await else {
            continue;
        };
        for c in list {
            if c.state != cri::ContainerState::ContainerRunning as i32
                || !c.labels.contains_key(labels::POD_UID_LABEL)
            {
                continue;
            }
            let Ok(st) = cri.container_status(&c.id).await else {
                continue;
            };
            if st.log_path.is_empty() {
                continue;
            }
            if let Err(e) =
                rotate_if_needed(&cri, &c.id, Path::new(&st.log_path), max_size, max_files).await
            {
                tracing::warn!(container = %c.id, error = %e, "cannot rotate container log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins_partial_lines() {
        let text = "2024-01-01T00:00:00.1Z stdout F one\n2024-01-01T00:00:00.2Z stderr P tw\n2024-01-01T00:00:00.3Z stderr F o\n2024-01-01T00:00:00.4Z stdout F \n2024-01-01T00:00:00.5Z stdout F par";
        let (lines, consumed) = parse(text, false);
        let msgs: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(msgs, ["one", "two", ""]);
        assert_eq!(lines[1].timestamp, "2024-01-01T00:00:00.2Z");
        assert_eq!(&text[consumed..], "2024-01-01T00:00:00.5Z stdout F par");
        assert_eq!(render(&lines[..1], true), "2024-01-01T00:00:00.1Z one\n");
    }

    #[test]
    fn output_without_a_final_newline_is_kept() {
        // `printf 'a\nNO-NEWLINE'`: the runtime writes the last bytes as a partial record.
        let text = "t1 stdout F a\nt2 stdout P NO-\nt3 stdout P NEWLINE\n";
        let (lines, consumed) = parse(text, false);
        assert_eq!(lines.len(), 1, "a follower waits for the rest: {lines:?}");
        assert_eq!(&text[consumed..], "t2 stdout P NO-\nt3 stdout P NEWLINE\n");
        let (lines, consumed) = parse(text, true);
        assert_eq!(consumed, text.len());
        assert_eq!(render(&lines, false), "a\nNO-NEWLINE");
        assert_eq!(render(&lines, true), "t1 a\nt2 NO-NEWLINE");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, text).unwrap();
        assert_eq!(
            read_all(&p, &LogOptions::default()).unwrap().0,
            "a\nNO-NEWLINE"
        );
    }

    #[test]
    fn query_options() {
        let o =
            LogOptions::from_query("tailLines=2&timestamps=true&previous&follow=false").unwrap();
        assert_eq!(
            o,
            LogOptions {
                tail_lines: Some(2),
                timestamps: true,
                previous: true,
                follow: false,
                limit_bytes: None,
                since: None,
            }
        );
        let e = LogOptions::from_query("tailLines=x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tailLines: \"x\" is not a non-negative integer"
        );
        let e = LogOptions::from_query("follow=maybe").unwrap_err();
        assert_eq!(e.to_string(), "follow: \"maybe\" is not a boolean");
        let e = LogOptions::from_query("limitBytes=0").unwrap_err();
        assert_eq!(e.to_string(), "limitBytes: \"0\" is not a positive integer");
    }

    #[test]
    fn since_time_and_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let recent = Timestamp::now().to_string();
        std::fs::write(
            &p,
            format!("2024-01-01T00:00:00.1Z stdout F old\n2024-01-01T00:00:02Z stdout F mid\n{recent} stdout F new\n"),
        )
        .unwrap();
        let o = LogOptions::from_query("sinceTime=2024-01-01T00%3A00%3A01Z").unwrap();
        assert_eq!(read_all(&p, &o).unwrap().0, "mid\nnew\n");
        let o = LogOptions::from_query("sinceSeconds=60").unwrap();
        assert_eq!(read_all(&p, &o).unwrap().0, "new\n");
        let e = LogOptions::from_query("sinceSeconds=0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sinceSeconds: \"0\" is not a positive integer"
        );
        let e = LogOptions::from_query("sinceTime=yesterday").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sinceTime: \"yesterday\" is not an RFC 3339 time"
        );
    }

    #[test]
    fn tail_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, "t1 stdout F a\nt2 stdout F b\nt3 stdout F c\n").unwrap();
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(read_all(&p, &tail).unwrap().0, "b\nc\n");
        let limit = LogOptions {
            limit_bytes: Some(3),
            ..Default::default()
        };
        assert_eq!(read_all(&p, &limit).unwrap().0, "a\nb");
    }
}
