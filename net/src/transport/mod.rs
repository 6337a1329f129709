//! TCP and UDP on a glommio shard: the one module of this crate that calls the runtime
//! (style.md rule 3).
//!
//! What it offers: a [`Listener`] bound on a shard, the [`Connection`]s it accepts (or that
//! [`Connection::connect`] makes), split into a [`ConnectionReader`] (which reads straight into
//! the connection's [`FrameDecoder`]) and a [`ConnectionWriter`] (which writes encoded frames),
//! or into a [`SocketReader`] and [`SocketWriter`] that move bytes only, each read and write
//! bounded by a timeout; and a [`DatagramSocket`] for the control plane's datagrams between
//! nodes (gossip, votes, maps), whose sends and receives are bounded the same way. Everything
//! here is `!Send`: a listener, its connections and their halves, and a datagram socket live on
//! the shard (thread) that created them.
//!
//! TCP sockets are non-blocking `std` sockets whose readiness comes from the shard's epoll set
//! (`readiness`, which says why not glommio's own sockets); datagram sockets are glommio's.
//!
//! What it does not do: decide anything. Frames, messages, the handshake and every limit on
//! what a peer may send are the sans-IO rest of the crate; a server or client drives them and
//! uses this module only to move bytes.
//!
//! **Cancel safety.** A read may be dropped before it completes (a server races it against
//! its shutdown signal): it waits for readiness and then reads with a non-blocking `recv`, so
//! a dropped read loses no bytes. A dropped write may have written part of its bytes: the
//! connection's framing is then lost, so a writer whose write failed or was dropped must be
//! closed. A [`DatagramSocket::recv_from`] dropped while its receive is in flight in io_uring
//! may lose the one datagram that completed it; datagrams are lossy anyway, and the protocols
//! over them (SWIM gossip, elections) are built to tolerate loss. Its own timeout does not drop
//! it: the kernel cancels the receive (an io_uring linked timeout), so a timed-out receive
//! loses nothing.

use crate::constants::UDP_PAYLOAD_BYTES_MAX;
use crate::decoder::FrameDecoder;
use crate::error::FrameError;
use crate::kind::ChannelKind;
use glommio::net::UdpSocket;
use readiness::{Direction, Registered};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

mod readiness;

/// Why a read or write of a connection ended without moving bytes. The connection is not
/// usable after any of them except [`TransportError::TimedOut`] on a read (nothing was
/// consumed; the caller may read again or close).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing arrived (or nothing could be written) within the timeout. A timed-out read
    /// consumed nothing; a timed-out write may have written part of its bytes.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The stream's framing failed earlier; see the decoder's error. The connection must be
    /// dropped.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed (reset, broken pipe, ...). The connection must be dropped.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl TransportError {
    /// As an `io::Error`, for callers that report only that.
    pub fn into_io(self) -> io::Error {
        match self {
            TransportError::TimedOut(duration) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {duration:?}"),
            ),
            TransportError::Frame(error) => io::Error::new(io::ErrorKind::InvalidData, error),
            TransportError::Io(error) => error,
        }
    }
}

/// A listening TCP socket on the current shard.
#[derive(Debug)]
pub struct Listener {
    inner: Registered<std::net::TcpListener>,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds `address` (port 0: any free port; [`Listener::local_addr`] tells which). Must run
    /// on a glommio executor, which the listener then belongs to.
    ///
    /// The socket is made by `std` (`SO_REUSEADDR`, no `SO_REUSEPORT`): a second process
    /// cannot bind the same port and take half its connections, and a restarted node can bind
    /// its port while connections of its previous run linger in `TIME_WAIT`.
    pub fn bind(address: SocketAddr) -> io::Result<Listener> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        Ok(Listener {
            inner: Registered::new(listener)?,
            local_addr,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the next connection. Errors are per accept (a peer that reset before it was
    /// accepted, too many open files): the listener stays usable.
    pub async fn accept(&self) -> io::Result<Connection> {
        let (stream, peer_addr) = self
            .inner
            .io(
                Direction::Read,
                None,
                |listener| listener.accept(),
                |_| false,
            )
            .await
            .map_err(TransportError::into_io)?;
        stream.set_nonblocking(true)?;
        // Answers are small and pipelined; Nagle's delay would add latency to each.
        stream.set_nodelay(true)?;
        Ok(Connection {
            socket: Registered::new(stream)?,
            peer_addr,
        })
    }
}

/// An accepted (or connected) TCP connection on the current shard.
#[derive(Debug)]
pub struct Connection {
    socket: Registered<std::net::TcpStream>,
    peer_addr: SocketAddr,
}

impl Connection {
    /// Connects to `address` within `timeout` (the client side; tests use it too), without
    /// blocking the shard: the connect is non-blocking and the shard waits for it to finish.
    pub async fn connect(address: SocketAddr, timeout: Duration) -> io::Result<Connection> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage};
        let family = if address.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = nix::sys::socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let stream = std::net::TcpStream::from(fd);
        stream.set_nodelay(true)?;
        let socket = Registered::new(stream)?;
        match nix::sys::socket::connect(
            socket.socket().as_raw_fd(),
            &SockaddrStorage::from(address),
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EINPROGRESS) => {
                socket
                    .io(Direction::Write, Some(timeout), connected, |_| false)
                    .await
                    .map_err(TransportError::into_io)?;
            }
            Err(errno) => return Err(errno.into()),
        }
        Ok(Connection {
            socket,
            peer_addr: address,
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Splits into a reader that feeds a new decoder for `channel` and a writer, so that one
    /// task can read requests while another writes answers. The socket closes when both halves
    /// are dropped.
    pub fn split(self, channel: ChannelKind) -> (ConnectionReader, ConnectionWriter) {
        let (reader, writer) = self.into_halves();
        (
            ConnectionReader {
                half: reader,
                decoder: FrameDecoder::new(channel),
            },
            ConnectionWriter { half: writer },
        )
    }

    /// Splits into halves that move bytes only, for a caller with its own framing (the
    /// client's). The socket closes when both halves are dropped.
    pub fn into_halves(self) -> (SocketReader, SocketWriter) {
        let socket = Rc::new(self.socket);
        (
            SocketReader {
                socket: socket.clone(),
            },
            SocketWriter { socket },
        )
    }
}

/// Whether a non-blocking connect has finished: `WouldBlock` while it is under way, its error
/// if it failed.
fn connected(stream: &std::net::TcpStream) -> io::Result<()> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(()),
        Err(error) if error.raw_os_error() == Some(nix::errno::Errno::ENOTCONN as i32) => {
            Err(io::ErrorKind::WouldBlock.into())
        }
        Err(error) => Err(error),
    }
}

/// The reading half of a connection, moving bytes only.
#[derive(Debug)]
pub struct SocketReader {
    socket: Rc<Registered<std::net::TcpStream>>,
}

impl SocketReader {
    /// Reads what has arrived into `buffer`, waiting at most `timeout` (`None`: as long as it
    /// takes) for something to arrive; 0 means the peer closed its side. Cancel-safe: a read
    /// dropped while it waits has consumed nothing.
    pub async fn read(
        &mut self,
        buffer: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, TransportError> {
        let len = buffer.len();
        // A short read drained the socket's queue (see readiness.rs, "Known not ready"); 0 is
        // the end of the stream, which stays readable.
        self.socket
            .io(
                Direction::Read,
                timeout,
                |mut stream| stream.read(buffer),
                |&count| count > 0 && count < len,
            )
            .await
    }
}

/// The writing half of a connection, moving bytes only.
#[derive(Debug)]
pub struct SocketWriter {
    socket: Rc<Registered<std::net::TcpStream>>,
}

impl SocketWriter {
    /// Writes all of `bytes`. `timeout` bounds each step that makes no progress (a peer that
    /// stops reading), not the whole write; `None`: no bound. On error, part may have been
    /// written: close the connection.
    pub async fn write_all(
        &mut self,
        bytes: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), TransportError> {
        let mut written = 0;
        while written < bytes.len() {
            // `std` sends with `MSG_NOSIGNAL`: a peer that closed is an error, not a SIGPIPE.
            let count = self
                .socket
                .io(
                    Direction::Write,
                    timeout,
                    |mut stream| stream.write(&bytes[written..]),
                    // A short write filled the socket's buffer.
                    |&count| count < bytes.len() - written,
                )
                .await?;
            if count == 0 {
                return Err(TransportError::Io(io::ErrorKind::WriteZero.into()));
            }
            written += count;
        }
        Ok(())
    }

    /// Shuts the sending direction down: the peer reads end of stream once it has read what
    /// was written.
    pub fn close(&mut self) -> Result<(), TransportError> {
        self.socket
            .socket()
            .shutdown(std::net::Shutdown::Write)
            .map_err(TransportError::Io)
    }
}

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes went into the decoder; pop its frames.
    Received(usize),
    /// The peer closed its side of the stream (check [`FrameDecoder::finish`]).
    Closed,
}

/// The reading half of a connection, with the connection's frame decoder.
#[derive(Debug)]
pub struct ConnectionReader {
    half: SocketReader,
    decoder: FrameDecoder,
}

impl ConnectionReader {
    /// The decoder: pop frames with [`FrameDecoder::next_frame`] after a read.
    pub fn decoder(&mut self) -> &mut FrameDecoder {
        &mut self.decoder
    }

    /// Reads what has arrived (waiting at most `timeout`) into the decoder's read buffer. Pop
    /// the buffered frames first: with whole frames waiting the buffer may have no room, and
    /// this returns `Received(0)` without reading. Cancel-safe (see the module docs).
    pub async fn read(&mut self, timeout: Duration) -> Result<ReadOutcome, TransportError> {
        let buffer = self.decoder.read_buf()?;
        if buffer.is_empty() {
            return Ok(ReadOutcome::Received(0));
        }
        let bytes = self.half.read(buffer, Some(timeout)).await?;
        if bytes == 0 {
            return Ok(ReadOutcome::Closed);
        }
        self.decoder.advance(bytes);
        Ok(ReadOutcome::Received(bytes))
    }
}

/// The writing half of a connection.
#[derive(Debug)]
pub struct ConnectionWriter {
    half: SocketWriter,
}

impl ConnectionWriter {
    /// Writes all of `bytes` (whole encoded frames). `timeout` bounds each step that makes no
    /// progress (a peer that stops reading), not the whole write. On error, part may have been
    /// written: close the connection.
    pub async fn write_all(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.half.write_all(bytes, Some(timeout)).await
    }

    /// Shuts the sending direction down (the peer reads end of stream once it has read what
    /// was written). It does not wait: the kernel sends what is queued, then the end.
    pub fn close(&mut self) -> Result<(), TransportError> {
        self.half.close()
    }
}

/// A UDP socket on the current shard, for the control plane's datagrams between nodes.
///
/// One datagram is one message: it arrives whole or not at all, possibly twice, possibly out of
/// order. Nothing here decides anything about its content; the cluster crate (or a net
/// [`crate::MessageKind::Control`] frame) validates every datagram before reading it.
#[derive(Debug)]
pub struct DatagramSocket {
    inner: UdpSocket,
    local_addr: SocketAddr,
}

impl DatagramSocket {
    /// Binds `address` (port 0: any free port; [`DatagramSocket::local_addr`] tells which).
    /// Must run on a glommio executor, which the socket then belongs to.
    ///
    /// As for [`Listener::bind`], the socket is made by `std` (no `SO_REUSEPORT`) and handed to
    /// glommio: glommio's own `bind` sets `SO_REUSEPORT`, with which a second process (a second
    /// node started on the same gossip port by mistake) could bind the same port and silently
    /// take part of the node's datagrams, instead of failing with "address in use".
    pub fn bind(address: SocketAddr) -> io::Result<DatagramSocket> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let socket = std::net::UdpSocket::bind(address)?;
        let local_addr = socket.local_addr()?;
        let fd = socket.into_raw_fd();
        #[expect(
            unsafe_code,
            reason = "glommio takes a bound UDP socket only as a raw fd; `into_raw_fd` gave up \
                      ownership of this bound one, so it is owned exactly once"
        )]
        // SAFETY: `fd` is a valid, bound UDP socket that nothing else owns.
        let inner = unsafe { UdpSocket::from_raw_fd(fd) };
        Ok(DatagramSocket { inner, local_addr })
    }

    /// The address it is bound to (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends `datagram` to `to` as one UDP datagram, waiting at most `timeout` for room in the
    /// socket's send buffer. The datagram goes whole or not at all; success means the kernel
    /// took it, not that it arrived. One over [`UDP_PAYLOAD_BYTES_MAX`] is refused before any
    /// syscall.
    pub async fn send_to(
        &self,
        datagram: &[u8],
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        if datagram.len() > UDP_PAYLOAD_BYTES_MAX {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a datagram of {} bytes is over the UDP limit of {UDP_PAYLOAD_BYTES_MAX}",
                    datagram.len()
                ),
            )));
        }
        // glommio reads the timeout when it submits the send, which the first poll of the
        // await below does: no other task can change it in between.
        self.inner
            .set_write_timeout(Some(io_timeout(timeout)))
            .map_err(io::Error::from)?;
        let sent = self
            .inner
            .send_to(datagram, to)
            .await
            .map_err(|error| timed_out_or_io(io::Error::from(error), timeout))?;
        if sent != datagram.len() {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("{sent} of {} datagram bytes sent", datagram.len()),
            )));
        }
        Ok(())
    }

    /// Waits at most `timeout` for the next datagram; copies it into `buffer` and returns its
    /// length and sender. A datagram longer than `buffer` is cut to its length without notice
    /// (the kernel drops the rest): give a buffer of [`UDP_PAYLOAD_BYTES_MAX`] bytes, or rely on
    /// the datagram's own length and checksum (a net frame, the cluster crate's header) to
    /// refuse a cut one. Give a 16-aligned buffer (`rkyv::util::AlignedVec<16>`) when the
    /// datagram holds a frame whose body is read in place. A timeout is
    /// [`TransportError::TimedOut`] and consumes nothing; other errors (an ICMP port
    /// unreachable reported for an earlier send, say) leave the socket usable.
    pub async fn recv_from(
        &self,
        buffer: &mut [u8],
        timeout: Duration,
    ) -> Result<(usize, SocketAddr), TransportError> {
        // As in `send_to`: read by glommio at submission, during the first poll below.
        self.inner
            .set_read_timeout(Some(io_timeout(timeout)))
            .map_err(io::Error::from)?;
        self.inner
            .recv_from(buffer)
            .await
            .map_err(|error| timed_out_or_io(io::Error::from(error), timeout))
    }
}

/// glommio refuses a zero timeout (`EINVAL`); the shortest it takes is a poll all the same.
fn io_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_nanos(1))
}

/// glommio reports an expired io_uring timeout as an `ETIMEDOUT` I/O error.
fn timed_out_or_io(error: io::Error, timeout: Duration) -> TransportError {
    if error.kind() == io::ErrorKind::TimedOut {
        TransportError::TimedOut(timeout)
    } else {
        TransportError::Io(error)
    }
}
