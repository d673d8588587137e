//! Service output: a bounded in-memory ring of whole lines plus an optional rotated file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::error::Error;
use crate::spec::LogSettings;

/// Longest partial line buffered before it is flushed without a newline.
const MAX_LINE: usize = 16 * 1024;
/// Lines a follower may fall behind before it sees `Lagged`.
const FOLLOW_CAPACITY: usize = 1024;

/// Receives every line a service writes from the moment it was created.
pub type LogFollower = tokio::sync::broadcast::Receiver<Arc<[u8]>>;

/// The last `capacity` bytes of output, dropping the oldest whole lines.
#[derive(Debug)]
pub(crate) struct LogRing {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    capacity: usize,
}

impl LogRing {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Appends one line (normally ending in `\n`). A line longer than the whole ring
    /// keeps only its tail.
    pub(crate) fn push(&mut self, line: &[u8]) {
        let line = &line[line.len().saturating_sub(self.capacity)..];
        while self.bytes + line.len() > self.capacity {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
        self.bytes += line.len();
        self.lines.push_back(line.to_vec());
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes);
        for line in &self.lines {
            out.extend_from_slice(line);
        }
        out
    }
}

/// `<dir>/<name>.log`, renamed to `.1`, `.2`, ... when it would exceed `max_bytes`.
#[derive(Debug)]
pub(crate) struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    kept: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub(crate) fn open(path: PathBuf, max_bytes: u64, kept: u32) -> Result<Self, Error> {
        let mut this = Self {
            path,
            max_bytes,
            kept,
            file: None,
            size: 0,
        };
        this.reopen()?;
        Ok(this)
    }

    fn err(&self, source: std::io::Error) -> Error {
        Error::Log {
            path: self.path.clone(),
            source,
        }
    }

    fn reopen(&mut self) -> Result<(), Error> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
        self.size = file.metadata().map_err(|e| self.err(e))?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<(), Error> {
        self.file = None;
        if self.kept == 0 {
            std::fs::remove_file(&self.path).map_err(|e| self.err(e))?;
        } else {
            for n in (1..self.kept).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1)).map_err(|e| self.err(e))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1)).map_err(|e| self.err(e))?;
        }
        self.reopen()
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.size > 0 && self.size + data.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.write_all(data)
        {
            self.file = None;
            return Err(self.err(e));
        }
        self.size += data.len() as u64;
        Ok(())
    }
}

/// Everything one service's output goes to. Shared between the pipe readers and
/// `Supervisor::logs`; survives restarts.
#[derive(Debug)]
pub(crate) struct LogSink {
    service: String,
    ring: LogRing,
    file: Option<RotatingFile>,
    followers: tokio::sync::broadcast::Sender<Arc<[u8]>>,
}

pub(crate) type SharedSink = Arc<Mutex<LogSink>>;

impl LogSink {
    /// Creates the sink; a file that cannot be opened is reported and skipped.
    pub(crate) fn new(service: &str, settings: &LogSettings, dir: Option<&Path>) -> SharedSink {
        let file = dir.and_then(|dir| {
            let path = dir.join(format!("{service}.log"));
            match RotatingFile::open(path, settings.file_max_bytes, settings.files_kept) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(service = %service, error = %e, "log file disabled");
                    None
                }
            }
        });
        Arc::new(Mutex::new(Self {
            service: service.to_owned(),
            ring: LogRing::new(settings.ring_bytes),
            file,
            followers: tokio::sync::broadcast::channel(FOLLOW_CAPACITY).0,
        }))
    }

    fn line(&mut self, line: &[u8]) {
        self.ring.push(line);
        if self.followers.receiver_count() > 0 {
            let _ = self.followers.send(Arc::from(line));
        }
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.write(line)
        {
            tracing::warn!(service = %self.service, error = %e, "log file disabled");
            self.file = None;
        }
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        self.ring.contents()
    }

    /// Every line from now on; taken under the same lock as [`Self::contents`], so
    /// nothing falls between the two.
    pub(crate) fn follow(&self) -> LogFollower {
        self.followers.subscribe()
    }

    /// Closes the log file (the ring stays), so the filesystem holding it can be
    /// unmounted at shutdown.
    pub(crate) fn close_file(&mut self) {
        self.file = None;
    }
}

pub(crate) fn lock(sink: &SharedSink) -> std::sync::MutexGuard<'_, LogSink> {
    sink.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one output pipe until EOF, handing whole lines to the sink.
pub(crate) async fn pump(mut rx: pipe::Receiver, sink: SharedSink) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let guard = lock(&sink);
                tracing::warn!(service = %guard.service, error = %e, "reading output failed");
                break;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        let mut guard = lock(&sink);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            guard.line(&pending[start..start + pos + 1]);
            start += pos + 1;
        }
        pending.drain(..start);
        if pending.len() >= MAX_LINE {
            guard.line(&pending);
            pending.clear();
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        lock(&sink).line(&pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_oldest_whole_lines() {
        let mut ring = LogRing::new(16);
        ring.push(b"aaaa\n");
        ring.push(b"bbbb\n");
        ring.push(b"cccc\n");
        assert_eq!(ring.contents(), b"aaaa\nbbbb\ncccc\n");
        ring.push(b"dd\n");
        assert_eq!(ring.contents(), b"bbbb\ncccc\ndd\n");
        ring.push(b"0123456789abcdefXYZ\n");
        assert_eq!(ring.contents(), b"456789abcdefXYZ\n");
        assert!(ring.bytes <= 16);
    }

    #[test]
    fn rotation_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut file = RotatingFile::open(path.clone(), 10, 2).unwrap();
        for line in ["line-1\n", "line-2\n", "line-3\n", "line-4\n"] {
            file.write(line.as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "line-4\n");
        assert_eq!(read(&dir.path().join("svc.log.1")), "line-3\n");
        assert_eq!(read(&dir.path().join("svc.log.2")), "line-2\n");
        assert!(!dir.path().join("svc.log.3").exists());
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("svc.log");
        RotatingFile::open(path.clone(), 100, 1)
            .unwrap()
            .write(b"one\n")
            .unwrap();
        let mut file = RotatingFile::open(path.clone(), 100, 1).unwrap();
        file.write(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn sink_without_dir_keeps_ring() {
        let settings = LogSettings {
            ring_bytes: 8,
            ..LogSettings::default()
        };
        let sink = LogSink::new("svc", &settings, None);
        lock(&sink).line(b"abc\n");
        lock(&sink).line(b"defgh\n");
        assert_eq!(lock(&sink).contents(), b"defgh\n");
    }
}
