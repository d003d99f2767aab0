//! Framing of the control protocol (hastctl ⇄ hastd): one JSON document per line, bounded
//! by [`MAX_MESSAGE`]. The messages themselves are in `hast_core::control`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use hast_core::control::{Reply, Request, MAX_MESSAGE};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// A control message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum ControlIoError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed before a whole message arrived.
    #[error("connection closed before a complete message arrived")]
    Closed,
    /// More than [`MAX_MESSAGE`] bytes without a newline.
    #[error("message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// Not valid JSON for the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Encodes one message as a line.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlIoError> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    if line.len() > MAX_MESSAGE {
        return Err(ControlIoError::TooLong);
    }
    Ok(line)
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, ControlIoError> {
    if line.last() != Some(&b'\n') {
        return Err(if line.len() >= MAX_MESSAGE {
            ControlIoError::TooLong
        } else {
            ControlIoError::Closed
        });
    }
    Ok(serde_json::from_slice(line)?)
}

/// Reads one message from an async stream (the daemon's side).
pub async fn read_async<T, R>(reader: &mut R) -> Result<T, ControlIoError>
where
    T: DeserializeOwned,
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, MAX_MESSAGE as u64);
    limited.read_until(b'\n', &mut line).await?;
    decode(&line)
}

/// Writes one message to an async stream.
pub async fn write_async<T, W>(writer: &mut W, msg: &T) -> Result<(), ControlIoError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    writer.write_all(&encode(msg)?).await?;
    writer.flush().await?;
    Ok(())
}

/// hastctl's side: connects to the daemon at `socket`, sends `request`, waits up to
/// `timeout` for the reply.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(CallError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(CallError::Connect)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(CallError::Connect)?;
    stream
        .write_all(&encode(request).map_err(CallError::Exchange)?)
        .map_err(|e| CallError::Exchange(e.into()))?;
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_MESSAGE as u64));
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| CallError::Exchange(e.into()))?;
    decode(&line).map_err(CallError::Exchange)
}

/// hastctl could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The control socket does not accept connections (hastd not running?).
    #[error("cannot connect to hastd: {0}")]
    Connect(std::io::Error),
    /// The exchange failed half way.
    #[error("no valid reply from hastd: {0}")]
    Exchange(ControlIoError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_core::metadata::Role;

    #[tokio::test]
    async fn messages_round_trip_and_garbage_is_refused() {
        let req = Request::SetRole {
            role: Role::Primary,
            resources: vec!["r0".into()],
            force: true,
        };
        let line = encode(&req).unwrap();
        let mut reader = &line[..];
        let back: Request = read_async(&mut reader).await.unwrap();
        assert_eq!(back, req);

        let mut garbage = &b"{\"cmd\":\"explode\"}\n"[..];
        assert!(matches!(
            read_async::<Request, _>(&mut garbage).await,
            Err(ControlIoError::Malformed(_))
        ));
        let mut cut = &b"{\"cmd\":"[..];
        assert!(matches!(
            read_async::<Request, _>(&mut cut).await,
            Err(ControlIoError::Closed)
        ));
        let huge = vec![b'x'; MAX_MESSAGE + 10];
        let mut huge = &huge[..];
        assert!(matches!(
            read_async::<Request, _>(&mut huge).await,
            Err(ControlIoError::TooLong)
        ));
    }
}
