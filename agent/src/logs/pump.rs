//! Reading an instance's FIFOs: output is split into lines, stamped, appended to the log
//! file and sent to followers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::{broadcast, watch};

use super::file::LogFile;
use super::{Live, LogLine};

/// Longer lines are cut into pieces of this many bytes.
const MAX_LINE: usize = 16 * 1024;

/// When stopping, reading goes on until the FIFOs stay empty this long.
const DRAIN_QUIET: Duration = Duration::from_millis(20);

pub(super) struct Pump {
    pub instance: String,
    pub function: String,
    pub live: Arc<Live>,
    pub log: LogFile,
    pub tx: broadcast::Sender<Arc<LogLine>>,
    pub last_ns: u64,
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

impl Pump {
    pub async fn run(mut self, mut out: Receiver, mut err: Receiver, mut stop: watch::Receiver<bool>) {
        let mut partial = [Vec::new(), Vec::new()];
        let mut ob = vec![0u8; 32 * 1024];
        let mut eb = vec![0u8; 32 * 1024];
        loop {
            let (stream, n) = tokio::select! {
                r = out.read(&mut ob) => (0, r),
                r = err.read(&mut eb) => (1, r),
                _ = stop.changed() => break,
            };
            match n {
                Ok(n) if n > 0 => {
                    let buf = if stream == 0 { &ob[..n] } else { &eb[..n] };
                    self.take(stream, &mut partial[stream], buf);
                }
                // Opened read-write, a FIFO never ends; an error ends the reading.
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(instance = %self.instance, error = %e, "reading instance output");
                    break;
                }
            }
        }
        // What the function printed last may still be on its way.
        loop {
            let got = tokio::select! {
                r = out.read(&mut ob) => r.map(|n| (0, n)),
                r = err.read(&mut eb) => r.map(|n| (1, n)),
                _ = tokio::time::sleep(DRAIN_QUIET) => break,
            };
            match got {
                Ok((stream, n)) if n > 0 => {
                    let buf = if stream == 0 { &ob[..n] } else { &eb[..n] };
                    self.take(stream, &mut partial[stream], buf);
                }
                _ => break,
            }
        }
        for (stream, rest) in partial.iter_mut().enumerate() {
            if !rest.is_empty() {
                let rest = std::mem::take(rest);
                self.emit(stream, vec![rest]);
            }
        }
    }

    /// Adds output of a stream; emits the lines it completes.
    fn take(&mut self, stream: usize, partial: &mut Vec<u8>, bytes: &[u8]) {
        partial.extend_from_slice(bytes);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|b| *b == b'\n') {
            lines.push(partial[start..start + pos].to_vec());
            start += pos + 1;
        }
        partial.drain(..start);
        while partial.len() >= MAX_LINE {
            lines.push(partial.drain(..MAX_LINE).collect());
        }
        if !lines.is_empty() {
            self.emit(stream, lines);
        }
    }

    fn emit(&mut self, stream: usize, lines: Vec<Vec<u8>>) {
        let request_ids = self.live.calls().stamp();
        let mut encoded = Vec::new();
        let mut out = Vec::with_capacity(lines.len());
        for raw in lines {
            let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
            let now =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            self.last_ns = now.max(self.last_ns + 1);
            let line = LogLine {
                time_ns: self.last_ns,
                stream: STREAMS[stream].into(),
                instance: self.instance.clone(),
                function: self.function.clone(),
                request_ids: request_ids.clone(),
                line: String::from_utf8_lossy(raw).into_owned(),
            };
            if serde_json::to_writer(&mut encoded, &line).is_ok() {
                encoded.push(b'\n');
            }
            out.push(line);
        }
        if let Err(e) = self.log.append(&encoded) {
            tracing::warn!(instance = %self.instance, error = %e, "writing the instance's log");
        }
        for l in out {
            let _ = self.tx.send(Arc::new(l));
        }
    }
}
