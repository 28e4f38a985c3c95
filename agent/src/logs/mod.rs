//! Instance logs. Each instance's stdout and stderr are FIFOs the agent creates and
//! reads (containerd's shim writes to them); every line is stamped with its time, stream,
//! instance, function and the request ids of the calls in flight on that instance, and
//! appended as a JSON line to `<dir>/<function>/<instance>.log`, which rotates at a size
//! cap. The FIFOs outlive the agent, so a restarted agent reads on where it stopped.
//!
//! Logs of ended instances are kept for the retention time, then swept.

mod file;
mod pump;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long after a call ends its request id still stamps the instance's lines: the
/// shim copies output to the FIFO a little after the function wrote it.
const CALL_GRACE: Duration = Duration::from_millis(50);

/// One stamped line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the agent read it, in nanoseconds since the Unix epoch (strictly increasing
    /// per instance).
    pub time_ns: u64,
    /// "stdout" or "stderr".
    pub stream: String,
    /// The instance that printed it.
    pub instance: String,
    /// Its function.
    pub function: String,
    /// The calls in flight on the instance when it was printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
    /// The text, without its line end (invalid UTF-8 replaced).
    pub line: String,
}

/// Which lines to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this function's.
    pub function: Option<String>,
    /// Only this instance's.
    pub instance: Option<String>,
    /// Only lines printed during this call.
    pub request_id: Option<String>,
    /// Only lines at or after this time (ns since the epoch).
    pub since_ns: u64,
}

impl Filter {
    /// Whether `l` is wanted.
    pub fn matches(&self, l: &LogLine) -> bool {
        l.time_ns >= self.since_ns
            && self.function.as_ref().is_none_or(|f| *f == l.function)
            && self.instance.as_ref().is_none_or(|i| *i == l.instance)
            && self.request_id.as_ref().is_none_or(|r| l.request_ids.contains(r))
    }
}

/// Size cap, rotation and retention of instance logs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Bytes of one log file before it rotates.
    pub max_bytes: u64,
    /// Files kept per instance, the current one included.
    pub files: u32,
    /// How long the logs of an ended instance are kept.
    pub retention: Duration,
}

/// The FIFOs an instance's task writes to.
#[derive(Clone, Debug)]
pub struct Io {
    /// Its stdout.
    pub stdout: PathBuf,
    /// Its stderr.
    pub stderr: PathBuf,
}

/// Why an instance's log could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up the log of instance {instance}: {what} {path}: {source}")]
pub struct LogError {
    instance: String,
    what: &'static str,
    path: String,
    #[source]
    source: std::io::Error,
}

/// The calls in flight on one instance, and those that just ended.
#[derive(Debug, Default)]
struct Calls {
    in_flight: Vec<Arc<str>>,
    ended: VecDeque<(Arc<str>, Instant)>,
}

impl Calls {
    /// Forgets the calls whose grace is over.
    fn prune(&mut self, now: Instant) {
        while self.ended.front().is_some_and(|(_, t)| now.duration_since(*t) > CALL_GRACE) {
            self.ended.pop_front();
        }
    }

    fn stamp(&mut self) -> Vec<String> {
        self.prune(Instant::now());
        let mut ids: Vec<String> = self.ended.iter().map(|(id, _)| id.to_string()).collect();
        ids.extend(self.in_flight.iter().map(|id| id.to_string()));
        ids.dedup();
        ids
    }
}

/// An instance whose output is being read.
#[derive(Debug)]
struct Live {
    calls: Mutex<Calls>,
    stop: watch::Sender<bool>,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl Live {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's instance logs.
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    fifo_dir: PathBuf,
    settings: Settings,
    live: Mutex<HashMap<String, Arc<Live>>>,
    tx: broadcast::Sender<Arc<LogLine>>,
}

/// Marks a call in flight on an instance until dropped.
#[derive(Debug)]
pub struct CallGuard {
    live: Option<Arc<Live>>,
    /// One allocation per call, shared by the in-flight and ended lists.
    request_id: Arc<str>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            let mut calls = live.calls();
            if let Some(pos) = calls.in_flight.iter().position(|r| Arc::ptr_eq(r, &self.request_id)) {
                calls.in_flight.remove(pos);
            }
            let now = Instant::now();
            // Pruned here too: an instance that prints nothing never stamps.
            calls.prune(now);
            calls.ended.push_back((self.request_id.clone(), now));
        }
    }
}

impl Logs {
    /// Logs under `dir`, FIFOs under `fifo_dir`.
    pub fn new(dir: PathBuf, fifo_dir: PathBuf, settings: Settings) -> Logs {
        let (tx, _) = broadcast::channel(4096);
        Logs { dir, fifo_dir, settings, live: Mutex::new(HashMap::new()), tx }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log file of an instance.
    pub fn path(&self, function: &str, instance: &str) -> PathBuf {
        self.dir.join(function).join(format!("{instance}.log"))
    }

    /// Makes (or, after a restart, finds again) an instance's FIFOs and starts reading them.
    pub async fn attach(&self, instance: &str, function: &str) -> Result<Io, LogError> {
        let err = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| LogError { instance: instance.to_string(), what, path, source }
        };
        let dir = self.fifo_dir.join(instance);
        tokio::fs::create_dir_all(&dir).await.map_err(err("create", &dir))?;
        let io = Io { stdout: dir.join("stdout"), stderr: dir.join("stderr") };
        let mut pipes = Vec::new();
        for path in [&io.stdout, &io.stderr] {
            match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(err("mkfifo", path)(std::io::Error::from(e))),
            }
            // Opened for writing too: reading never sees an end while no writer is there
            // (before the shim opens it, or while it restarts).
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(path)
                .map_err(err("open", path))?;
            pipes.push(rx);
        }
        let log_path = self.path(function, instance);
        let log = file::LogFile::open(log_path.clone(), self.settings.max_bytes, self.settings.files)
            .map_err(err("open", &log_path))?;
        let (stop, stop_rx) = watch::channel(false);
        let live = Arc::new(Live { calls: Mutex::default(), stop, pump: Mutex::new(None) });
        let stderr = pipes.pop();
        let stdout = pipes.pop();
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else { unreachable!("two pipes were opened") };
        let pump = pump::Pump {
            instance: instance.to_string(),
            function: function.to_string(),
            live: live.clone(),
            log,
            tx: self.tx.clone(),
            last_ns: 0,
        };
        *live.pump.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::spawn(pump.run(stdout, stderr, stop_rx)));
        let old = self.live().insert(instance.to_string(), live);
        if let Some(old) = old {
            stop_pump(&old).await;
        }
        Ok(io)
    }

    /// Stops reading an instance's output, once what is left in its FIFOs is read, and
    /// removes the FIFOs. Its log file stays for the retention time.
    pub async fn detach(&self, instance: &str) {
        let live = self.live().remove(instance);
        if let Some(live) = live {
            stop_pump(&live).await;
        }
        let dir = self.fifo_dir.join(instance);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(instance, error = %e, "removing the instance's FIFOs"),
        }
    }

    /// Marks a call in flight on `instance` until the guard is dropped: lines it prints
    /// meanwhile carry `request_id`.
    pub fn call(&self, instance: &str, request_id: &str) -> CallGuard {
        let live = self.live().get(instance).cloned();
        let request_id: Arc<str> = Arc::from(request_id);
        if let Some(l) = &live {
            l.calls().in_flight.push(request_id.clone());
        }
        CallGuard { live, request_id }
    }

    /// New lines as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.tx.subscribe()
    }

    /// The lines on disk that `filter` wants, oldest first (blocking: file reads).
    pub fn read(&self, filter: &Filter) -> Vec<LogLine> {
        let mut files: Vec<Vec<PathBuf>> = Vec::new();
        match (&filter.instance, &filter.function) {
            (Some(i), _) => {
                let function = filter.function.clone().unwrap_or_else(|| function_of(i).to_string());
                files.push(file::files_of(&self.path(&function, i)));
            }
            (None, Some(f)) => files.extend(self.instance_logs(&self.dir.join(f))),
            (None, None) => {
                for d in read_dir(&self.dir) {
                    files.extend(self.instance_logs(&d));
                }
            }
        }
        let mut out: Vec<LogLine> =
            files.iter().flat_map(|f| file::read(f, &|l| filter.matches(l))).collect();
        out.sort_by(|a, b| a.time_ns.cmp(&b.time_ns).then_with(|| a.instance.cmp(&b.instance)));
        out
    }

    /// The log files of each instance in a function's directory.
    fn instance_logs(&self, function_dir: &Path) -> Vec<Vec<PathBuf>> {
        read_dir(function_dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| file::files_of(&p))
            .collect()
    }

    /// Removes the FIFOs of instances not in `keep` (left by a crashed agent).
    pub async fn sweep_fifos(&self, keep: &HashSet<String>) {
        for dir in read_dir(&self.fifo_dir) {
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if !keep.contains(&id) {
                self.detach(&id).await;
            }
        }
    }

    /// Removes the logs of instances that ended longer ago than the retention time
    /// (blocking: file system walk).
    pub fn sweep_files(&self) {
        let live: HashSet<String> = self.live().keys().cloned().collect();
        let horizon = SystemTime::now() - self.settings.retention;
        for function_dir in read_dir(&self.dir) {
            for f in read_dir(&function_dir) {
                let Some(name) = f.file_name().and_then(|n| n.to_str()) else { continue };
                let Some((instance, _)) = name.split_once(".log") else { continue };
                let old = std::fs::metadata(&f).and_then(|m| m.modified()).is_ok_and(|t| t < horizon);
                if old && !live.contains(instance) {
                    if let Err(e) = std::fs::remove_file(&f) {
                        tracing::warn!(file = %f.display(), error = %e, "removing an old log");
                    }
                }
            }
            // Only removed when empty.
            let _ = std::fs::remove_dir(&function_dir);
        }
    }

    /// Sweeps old logs every minute until `shutdown`.
    pub async fn sweep_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.sweep_files()).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Sends the lines `filter` wants to `tx`, oldest first; with `follow`, then every new
/// one, until the receiver goes away.
pub async fn stream<T>(
    logs: Arc<Logs>,
    filter: Filter,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<T>,
    convert: fn(&LogLine) -> T,
) {
    // Subscribed before reading the files, so no line falls between the two.
    let mut rx = follow.then(|| logs.subscribe());
    // The newest line sent of each instance: what the files and the channel both hold is
    // sent once.
    let mut sent: HashMap<String, u64> = HashMap::new();
    let from_files = |logs: Arc<Logs>, filter: Filter| async move {
        tokio::task::spawn_blocking(move || logs.read(&filter)).await.unwrap_or_default()
    };
    let lines = from_files(logs.clone(), filter.clone()).await;
    if !send_new(&tx, &mut sent, lines.iter(), convert).await {
        return;
    }
    let Some(rx) = rx.as_mut() else { return };
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(l) if filter.matches(&l) => {
                    if !send_new(&tx, &mut sent, std::iter::once(&*l), convert).await {
                        return;
                    }
                }
                Ok(_) => {}
                // Fell behind the channel: the files have what was missed.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let lines = from_files(logs.clone(), filter.clone()).await;
                    if !send_new(&tx, &mut sent, lines.iter(), convert).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        }
    }
}

/// Sends the lines newer than the last sent of their instance; false once the receiver is gone.
async fn send_new<'a, T>(
    tx: &tokio::sync::mpsc::Sender<T>,
    sent: &mut HashMap<String, u64>,
    lines: impl Iterator<Item = &'a LogLine>,
    convert: fn(&LogLine) -> T,
) -> bool {
    for l in lines {
        let last = sent.entry(l.instance.clone()).or_insert(0);
        if l.time_ns <= *last {
            continue;
        }
        *last = l.time_ns;
        if tx.send(convert(l)).await.is_err() {
            return false;
        }
    }
    true
}

async fn stop_pump(live: &Live) {
    let _ = live.stop.send(true);
    let handle = live.pump.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(h) = handle {
        let _ = h.await;
    }
}

/// The function of an instance id `<function>-<8 hex>`.
pub fn function_of(instance: &str) -> &str {
    instance.rsplit_once('-').map_or(instance, |(f, _)| f)
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_call_stamps_while_in_flight_and_for_the_grace_after() {
        let logs = Logs::new(
            "/nonexistent".into(),
            "/nonexistent".into(),
            Settings { max_bytes: 1 << 20, files: 2, retention: Duration::from_secs(60) },
        );
        let (stop, _) = watch::channel(false);
        let live = Arc::new(Live { calls: Mutex::default(), stop, pump: Mutex::new(None) });
        logs.live().insert("f-1".into(), live.clone());
        assert!(live.calls().stamp().is_empty());
        let a = logs.call("f-1", "req-a");
        let b = logs.call("f-1", "req-b");
        assert_eq!(live.calls().stamp(), vec!["req-a", "req-b"]);
        drop(a);
        assert_eq!(live.calls().stamp(), vec!["req-a", "req-b"], "a is in its grace");
        std::thread::sleep(CALL_GRACE + Duration::from_millis(10));
        assert_eq!(live.calls().stamp(), vec!["req-b"]);
        drop(b);
        // Calls on an instance that prints nothing are forgotten after their grace.
        for i in 0..1000 {
            drop(logs.call("f-1", &format!("quiet-{i}")));
        }
        std::thread::sleep(CALL_GRACE + Duration::from_millis(10));
        drop(logs.call("f-1", "last"));
        assert_eq!(live.calls().ended.len(), 1);
        // A call on an instance the logs do not know is harmless.
        drop(logs.call("g-2", "req-c"));
    }

    #[test]
    fn filters_and_function_of_ids() {
        assert_eq!(function_of("echo-1a2b3c4d"), "echo");
        assert_eq!(function_of("my-fn-1a2b3c4d"), "my-fn");
        let l = LogLine {
            time_ns: 10,
            stream: "stdout".into(),
            instance: "f-1".into(),
            function: "f".into(),
            request_ids: vec!["r1".into()],
            line: "x".into(),
        };
        assert!(Filter::default().matches(&l));
        assert!(Filter { request_id: Some("r1".into()), ..Default::default() }.matches(&l));
        assert!(!Filter { request_id: Some("r2".into()), ..Default::default() }.matches(&l));
        assert!(!Filter { since_ns: 11, ..Default::default() }.matches(&l));
        assert!(!Filter { function: Some("g".into()), ..Default::default() }.matches(&l));
    }
}
