//! An instance's log on disk: JSON lines in `<dir>/<function>/<instance>.log`, rotated to
//! `.log.1`, `.log.2`... when the current file would pass its size cap.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::LogLine;

/// The appending end of one instance's log.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    files: u32,
}

impl LogFile {
    /// Opens (or creates) the log at `path` for appending.
    pub fn open(path: PathBuf, max_bytes: u64, files: u32) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path, file, size, max_bytes, files: files.max(1) })
    }

    /// Appends encoded lines, rotating first when they would pass the cap.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // With one file kept, the old lines are dropped.
        let last = self.files - 1;
        let _ = std::fs::remove_file(rotated(&self.path, last.max(1)));
        for k in (1..last).rev() {
            let _ = std::fs::rename(rotated(&self.path, k), rotated(&self.path, k + 1));
        }
        if last >= 1 {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// `<path>.<k>`.
fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// The files of one instance's log, oldest first.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..100).map(|k| rotated(path, k)).take_while(|p| p.exists()).collect();
    out.reverse();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// Every line of the files, oldest first, that `keep` accepts. Lines that do not parse
/// (a torn last line after a crash) are skipped.
pub fn read(files: &[PathBuf], keep: &dyn Fn(&LogLine) -> bool) -> Vec<LogLine> {
    let mut out = Vec::new();
    for f in files {
        let Ok(file) = File::open(f) else { continue };
        for line in BufReader::new(file).split(b'\n') {
            let Ok(line) = line else { break };
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                if keep(&l) {
                    out.push(l);
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(n: usize) -> LogLine {
        LogLine {
            time_ns: n as u64,
            stream: "stdout".into(),
            instance: "f-1".into(),
            function: "f".into(),
            request_ids: vec![],
            line: format!("line {n:04}"),
        }
    }

    #[test]
    fn rotation_keeps_the_cap_and_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f").join("f-1.log");
        let mut log = LogFile::open(path.clone(), 1000, 3).unwrap();
        for n in 0..200 {
            let mut b = serde_json::to_vec(&line(n)).unwrap();
            b.push(b'\n');
            log.append(&b).unwrap();
        }
        let files = files_of(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1000);
        }
        let lines = read(&files, &|_| true);
        assert_eq!(lines.last().unwrap().line, "line 0199");
        let times: Vec<u64> = lines.iter().map(|l| l.time_ns).collect();
        assert!(times.windows(2).all(|w| w[0] + 1 == w[1]), "oldest first, no gap: {times:?}");
        assert!(lines.len() < 200 && lines.len() > 20);
    }

    #[test]
    fn a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut b = serde_json::to_vec(&line(1)).unwrap();
        b.extend_from_slice(b"\n{\"time_ns\":2,\"str");
        std::fs::write(&path, b).unwrap();
        assert_eq!(read(&files_of(&path), &|_| true).len(), 1);
    }
}
