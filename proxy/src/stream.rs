//! The client's socket, plain or TLS, and exact packet reads for the connection phase.
//!
//! Connection-phase packets are read with exact-length reads and no read-ahead buffer: the TLS
//! ClientHello may follow an SSLRequest in the same TCP segment, and it must stay in the socket
//! for rustls to read (opensrv-mysql lost it this way).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use doze_protocol::{ErrPacket, MAX_FRAGMENT, Packet, ProtocolError, parse_header, write_packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The compute's socket: plain TCP, or TLS with `--backend-tls require`.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! either_stream {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

either_stream!(ClientStream);
either_stream!(BackendStream);

/// Largest connection-phase packet we accept from a client. Handshake responses are a few
/// hundred bytes; connect attributes can add some. Anything bigger is hostile.
pub const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// A client connection after (or without) the TLS upgrade.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The SNI host name the client sent, if it used TLS and sent one.
    pub fn sni(&self) -> Option<&str> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(tls) => tls.get_ref().1.server_name(),
        }
    }
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one logical packet (joining continuation fragments) of at most `max` bytes, without
/// reading a byte past it.
pub async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Packet, ReadError> {
    let mut payload = BytesMut::new();
    let mut first_seq = None;
    loop {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await?;
        let (len, seq) = parse_header(header);
        first_seq.get_or_insert(seq);
        if payload.len() + len > max {
            return Err(ProtocolError::TooLarge {
                size: payload.len() + len,
                max,
            }
            .into());
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        stream.read_exact(&mut payload[start..]).await?;
        if len < MAX_FRAGMENT {
            break;
        }
    }
    Ok(Packet {
        seq: first_seq.unwrap_or(0),
        payload: payload.freeze(),
    })
}

/// Writes `payload` as one logical packet starting at `seq` and flushes; returns the next seq.
pub async fn write_payload<S: AsyncWrite + Unpin>(
    stream: &mut S,
    seq: u8,
    payload: &[u8],
) -> io::Result<u8> {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    let next = write_packet(&mut out, seq, payload);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(next)
}

/// Encodes `err` and writes it at `seq`, ignoring failures: the connection is ending anyway.
pub async fn send_err<S: AsyncWrite + Unpin>(stream: &mut S, seq: u8, err: &ErrPacket) {
    let mut body = BytesMut::new();
    err.encode(&mut body);
    let _ = write_payload(stream, seq, &body).await;
}

/// A connection-phase socket and its framing state: the stream and the sequence id of the next
/// packet to send. Reads set it to answer what was read; writes advance it. The handshake, the
/// authentication and the connection's error path all go through one of these, so no phase
/// threads `(stream, seq)` by hand.
pub struct PacketStream<S> {
    stream: S,
    seq: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketStream<S> {
    /// A fresh connection phase: the server speaks first, at sequence id 0.
    pub fn new(stream: S) -> Self {
        Self { stream, seq: 0 }
    }

    /// A connection phase that goes on over another stream (after the TLS upgrade).
    pub fn resume(stream: S, seq: u8) -> Self {
        Self { stream, seq }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream and the sequence id of the next packet to send.
    pub fn into_parts(self) -> (S, u8) {
        (self.stream, self.seq)
    }

    /// Reads one packet of at most `max` bytes; the next write answers it.
    pub async fn read(&mut self, max: usize) -> Result<Packet, ReadError> {
        let packet = read_packet(&mut self.stream, max).await?;
        self.seq = packet.seq.wrapping_add(1);
        Ok(packet)
    }

    /// Writes `payload` as one packet (flushed).
    pub async fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        self.seq = write_payload(&mut self.stream, self.seq, payload).await?;
        Ok(())
    }

    /// Sends `err`, ignoring failures: the connection is ending anyway.
    pub async fn send_err(&mut self, err: &ErrPacket) {
        send_err(&mut self.stream, self.seq, err).await;
    }
}
