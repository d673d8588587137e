//! The machine API's side: one connection per request.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;

use crate::{Answer, Error, PowerAction, Reply, Request, ServiceInfo};

/// Longest wait for an answer; a stop waits out the service's stop timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A service's log: the kept lines, then (when following) new ones as they come.
pub struct LogStream {
    reader: BufReader<OwnedReadHalf>,
}

impl LogStream {
    /// The next piece of the log (whole lines as written, possibly several);
    /// `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = vec![0u8; 16 * 1024];
        let n = self.reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub async fn services(&self) -> Result<Vec<ServiceInfo>, Error> {
        match self.call(&Request::Services).await?.0 {
            Reply::Services(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), Error> {
        self.done(Request::Start { name: name.into() }).await
    }

    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        self.done(Request::Stop { name: name.into() }).await
    }

    pub async fn restart(&self, name: &str) -> Result<(), Error> {
        self.done(Request::Restart { name: name.into() }).await
    }

    /// `signal`: a name like `KILL`, `SIGTERM` or `hup`.
    pub async fn signal(&self, name: &str, signal: &str) -> Result<(), Error> {
        self.done(Request::Signal {
            name: name.into(),
            signal: signal.into(),
        })
        .await
    }

    pub async fn power(&self, action: PowerAction) -> Result<(), Error> {
        self.done(Request::Power { action }).await
    }

    pub async fn logs(
        &self,
        name: &str,
        tail_lines: Option<usize>,
        follow: bool,
    ) -> Result<LogStream, Error> {
        let (reply, reader) = self
            .call(&Request::Logs {
                name: name.into(),
                tail_lines,
                follow,
            })
            .await?;
        match reply {
            Reply::Streaming => Ok(LogStream { reader }),
            other => Err(unexpected(&other)),
        }
    }

    async fn done(&self, request: Request) -> Result<(), Error> {
        match self.call(&request).await?.0 {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, request: &Request) -> Result<(Reply, BufReader<OwnedReadHalf>), Error> {
        let conn = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        let (r, mut w) = conn.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        w.write_all(&line).await?;
        let mut reader = BufReader::new(r);
        let mut answer = String::new();
        tokio::time::timeout(ANSWER_TIMEOUT, reader.read_line(&mut answer))
            .await
            .map_err(|_| Error::Timeout(ANSWER_TIMEOUT.as_secs()))??;
        match serde_json::from_str::<Answer>(&answer)
            .map_err(|e| Error::Protocol(format!("{e}: {answer:?}")))?
        {
            Answer::Ok(reply) => Ok((reply, reader)),
            Answer::Error(r) => Err(Error::Refused {
                kind: r.kind,
                message: r.message,
            }),
        }
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::Protocol(format!("unexpected answer {reply:?}"))
}
