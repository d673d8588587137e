//! The kernel's log, from `/dev/kmsg`.
//!
//! Each `read` of `/dev/kmsg` returns one record, `pri,seq,usec,flags;message\n`,
//! possibly followed by dictionary lines that start with a space; the message has
//! non-printable bytes escaped (`\x0a`). The device is opened non-blocking: a read
//! past the newest record fails with `EAGAIN`, one whose record was overwritten
//! meanwhile with `EPIPE` (the next read goes on with the oldest kept). A regular
//! file of records (tests) reads the same, ending at end of file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_api::proto::LogChunk;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tonic::Status;

/// Large enough for any record (the kernel refuses smaller reads with `EINVAL`).
const READ_BUF: usize = 16 * 1024;
/// Lines are sent in chunks of about this size.
const CHUNK: usize = 32 * 1024;
/// How often a regular file (which cannot be polled) is re-read when following.
const FILE_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DmesgError {
    #[error("opening the kernel log {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
}

/// One record formatted as `dmesg` prints it: `[secs.micros] message\n`.
/// `None` for a line that is not a record.
pub fn format_record(line: &[u8]) -> Option<Vec<u8>> {
    let semi = line.iter().position(|b| *b == b';')?;
    let header = std::str::from_utf8(&line[..semi]).ok()?;
    let mut fields = header.split(',');
    let _priority: u32 = fields.next()?.trim().parse().ok()?;
    let _sequence: u64 = fields.next()?.trim().parse().ok()?;
    let usec: u64 = fields.next()?.trim().parse().ok()?;
    let message = line[semi + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&line[semi + 1..]);
    let mut out = format!("[{:5}.{:06}] ", usec / 1_000_000, usec % 1_000_000).into_bytes();
    out.extend_from_slice(message);
    out.push(b'\n');
    Some(out)
}

/// Splits what reads return into lines and keeps the formatted records.
#[derive(Debug, Default)]
struct Parser {
    /// An incomplete line (only from a regular file).
    carry: Vec<u8>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8], out: &mut Lines) {
        self.carry.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.carry[start..].iter().position(|b| *b == b'\n') {
            let line = &self.carry[start..start + end + 1];
            // Dictionary lines (" SUBSYSTEM=...") belong to the record before them.
            if !line.starts_with(b" ")
                && let Some(formatted) = format_record(line)
            {
                out.push(formatted);
            }
            start += end + 1;
        }
        self.carry.drain(..start);
    }
}

/// Formatted lines, keeping only the last `limit` when there is one.
#[derive(Debug)]
struct Lines {
    lines: VecDeque<Vec<u8>>,
    limit: Option<usize>,
}

impl Lines {
    fn new(limit: Option<usize>) -> Lines {
        Lines {
            lines: VecDeque::new(),
            limit,
        }
    }

    fn push(&mut self, line: Vec<u8>) {
        self.lines.push_back(line);
        if let Some(limit) = self.limit {
            while self.lines.len() > limit {
                self.lines.pop_front();
            }
        }
    }

    /// The lines so far, joined into chunks of about [`CHUNK`] bytes.
    fn take_chunks(&mut self) -> Vec<Vec<u8>> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for line in self.lines.drain(..) {
            match chunks.last_mut() {
                Some(c) if c.len() + line.len() <= CHUNK => c.extend_from_slice(&line),
                _ => chunks.push(line),
            }
        }
        chunks
    }
}

/// Reads every record available now: until `EAGAIN` (the device) or end of file.
fn drain(mut file: &File, parser: &mut Parser, out: &mut Lines) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => parser.feed(&buf[..n], out),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Records were overwritten before we read them; go on with what is kept.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An open kernel log, not yet read.
#[derive(Debug)]
pub struct Dmesg {
    file: File,
    path: PathBuf,
}

impl Dmesg {
    pub fn open(path: &Path) -> Result<Dmesg, DmesgError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|error| DmesgError::Open {
                path: path.to_path_buf(),
                error,
            })?;
        Ok(Dmesg {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Sends the last `tail_lines` records (0: all kept) to `tx` and then, when
    /// following, every new record as it comes, until the receiver goes away.
    pub async fn send(
        self,
        tail_lines: usize,
        follow: bool,
        tx: mpsc::Sender<Result<LogChunk, Status>>,
    ) {
        let Dmesg { file, path } = self;
        let limit = (tail_lines > 0).then_some(tail_lines);
        let initial = tokio::task::spawn_blocking(move || {
            let mut parser = Parser::default();
            let mut lines = Lines::new(limit);
            let result = drain(&file, &mut parser, &mut lines);
            (file, parser, lines, result)
        })
        .await;
        let (file, mut parser, mut lines, result) = match initial {
            Ok(x) => x,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "reading {}: {e}",
                        path.display()
                    ))))
                    .await;
                return;
            }
        };
        if !send_lines(&tx, &mut lines).await {
            return;
        }
        if let Err(e) = result {
            let _ = tx.send(Err(read_error(&path, &e))).await;
            return;
        }
        if !follow {
            return;
        }
        let mut lines = Lines::new(None);
        // SAFETY: the `File` owns its descriptor and is moved into the `AsyncFd`,
        // which owns it until dropped; nothing replaces or closes it meanwhile.
        let registered = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) };
        match registered {
            Ok(fd) => loop {
                let mut guard = tokio::select! {
                    _ = tx.closed() => return,
                    ready = fd.readable() => match ready {
                        Ok(g) => g,
                        Err(e) => {
                            let _ = tx.send(Err(read_error(&path, &e))).await;
                            return;
                        }
                    },
                };
                let result = drain(fd.get_ref(), &mut parser, &mut lines);
                guard.clear_ready();
                if !send_lines(&tx, &mut lines).await {
                    return;
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(read_error(&path, &e))).await;
                    return;
                }
            },
            // A regular file cannot be polled: re-read it now and then.
            Err(e) => {
                let (file, _not_pollable) = e.into_parts();
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(FILE_POLL) => {}
                    }
                    let result = drain(&file, &mut parser, &mut lines);
                    if !send_lines(&tx, &mut lines).await {
                        return;
                    }
                    if let Err(e) = result {
                        let _ = tx.send(Err(read_error(&path, &e))).await;
                        return;
                    }
                }
            }
        }
    }
}

fn read_error(path: &Path, e: &io::Error) -> Status {
    Status::internal(format!("reading {}: {e}", path.display()))
}

/// False when the receiver is gone.
async fn send_lines(tx: &mpsc::Sender<Result<LogChunk, Status>>, lines: &mut Lines) -> bool {
    for data in lines.take_chunks() {
        if tx.send(Ok(LogChunk { data })).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_records() {
        assert_eq!(
            format_record(b"6,339,5140900,-;NET: Registered protocol family 10\n").unwrap(),
            b"[    5.140900] NET: Registered protocol family 10\n"
        );
        assert_eq!(
            format_record(b"4,2,123456789012,c,more;x\\x0ay").unwrap(),
            b"[123456.789012] x\\x0ay\n"
        );
        assert!(format_record(b"garbage\n").is_none());
        assert!(format_record(b" SUBSYSTEM=pci\n").is_none());
    }

    #[test]
    fn parses_split_reads_skips_dictionaries_and_tails() {
        let mut parser = Parser::default();
        let mut lines = Lines::new(Some(2));
        parser.feed(b"6,1,1000000,-;one\n SUBSYSTEM=x\n6,2,2000", &mut lines);
        parser.feed(b"000,-;two\n6,3,3000000,-;three\n", &mut lines);
        let chunks = lines.take_chunks();
        assert_eq!(
            chunks,
            vec![b"[    2.000000] two\n[    3.000000] three\n".to_vec()]
        );
    }

    #[tokio::test]
    async fn reads_a_file_and_follows_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("kmsg");
        std::fs::write(&path, "6,1,1,-;a\n6,2,2,-;b\n6,3,3,-;c\n").unwrap();

        let (tx, mut rx) = mpsc::channel(8);
        Dmesg::open(&path).unwrap().send(2, false, tx).await;
        let got = rx.recv().await.unwrap().unwrap().data;
        assert_eq!(got, b"[    0.000002] b\n[    0.000003] c\n");
        assert!(rx.recv().await.is_none());

        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(Dmesg::open(&path).unwrap().send(1, true, tx));
        assert_eq!(
            rx.recv().await.unwrap().unwrap().data,
            b"[    0.000003] c\n"
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"6,4,4,-;d\n").unwrap();
        assert_eq!(
            rx.recv().await.unwrap().unwrap().data,
            b"[    0.000004] d\n"
        );
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
