//! Proves that `transport::DatagramSocket` moves whole datagrams between two sockets on a
//! glommio executor, each with its sender's address; that a receive with nothing to receive
//! ends with `TimedOut` after its timeout and loses nothing (a datagram sent afterwards still
//! arrives); that a control frame survives the trip and decodes to its body; and that a port
//! already bound cannot be bound again (no `SO_REUSEPORT`: a second node on the same gossip
//! port fails instead of splitting the first one's datagrams).

use coregrid_net::constants::{CONTROL_FRAME_BODY_BYTES_MAX, UDP_PAYLOAD_BYTES_MAX};
use coregrid_net::rkyv::util::AlignedVec;
use coregrid_net::transport::{DatagramSocket, TransportError};
use coregrid_net::{
    decode, encode_frame_raw, parse_frame, ChannelKind, Epoch, FrameMeta, MessageKind, MessageRef,
    RequestId,
};
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `test` on a glommio executor of its own (small io_uring memory: the machines here lock
/// little memory for non-root users).
fn on_executor(test: impl std::future::Future<Output = ()> + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 * 1024)
        .make()
        .expect("a glommio executor (io_uring and locked memory)")
        .run(test);
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[test]
fn datagrams_arrive_whole_with_their_sender() {
    on_executor(async {
        let a = DatagramSocket::bind(loopback()).unwrap();
        let b = DatagramSocket::bind(loopback()).unwrap();
        assert_ne!(a.local_addr().port(), 0, "port 0 became a real port");
        assert_ne!(a.local_addr(), b.local_addr());
        let mut buffer = vec![0u8; UDP_PAYLOAD_BYTES_MAX];
        for (index, size) in [1usize, 17, 1400, 9000].into_iter().enumerate() {
            let datagram: Vec<u8> = (0..size).map(|byte| (byte + index) as u8).collect();
            a.send_to(&datagram, b.local_addr(), TIMEOUT).await.unwrap();
            let (length, from) = b.recv_from(&mut buffer, TIMEOUT).await.unwrap();
            assert_eq!(from, a.local_addr());
            assert_eq!(&buffer[..length], &datagram[..], "datagram {index}");
        }
        // And back: both directions on the same sockets.
        b.send_to(b"pong", a.local_addr(), TIMEOUT).await.unwrap();
        let (length, from) = a.recv_from(&mut buffer, TIMEOUT).await.unwrap();
        assert_eq!((&buffer[..length], from), (&b"pong"[..], b.local_addr()));
        // An empty datagram is a datagram too.
        a.send_to(b"", b.local_addr(), TIMEOUT).await.unwrap();
        let (length, _) = b.recv_from(&mut buffer, TIMEOUT).await.unwrap();
        assert_eq!(length, 0);
    });
}

#[test]
fn a_receive_times_out_and_loses_nothing() {
    on_executor(async {
        let a = DatagramSocket::bind(loopback()).unwrap();
        let b = DatagramSocket::bind(loopback()).unwrap();
        let mut buffer = vec![0u8; 2048];
        for wait in [Duration::ZERO, Duration::from_millis(30)] {
            match b.recv_from(&mut buffer, wait).await {
                Err(TransportError::TimedOut(after)) => assert_eq!(after, wait),
                other => panic!("nothing was sent, yet: {other:?}"),
            }
        }
        a.send_to(b"after the timeout", b.local_addr(), TIMEOUT)
            .await
            .unwrap();
        let (length, from) = b.recv_from(&mut buffer, TIMEOUT).await.unwrap();
        assert_eq!(&buffer[..length], b"after the timeout");
        assert_eq!(from, a.local_addr());
    });
}

#[test]
fn a_control_frame_travels_in_one_datagram() {
    on_executor(async {
        let a = DatagramSocket::bind(loopback()).unwrap();
        let b = DatagramSocket::bind(loopback()).unwrap();
        // The largest control frame the channel allows fits one datagram.
        let body: Vec<u8> = (0..CONTROL_FRAME_BODY_BYTES_MAX)
            .map(|byte| byte as u8)
            .collect();
        let mut frame = Vec::new();
        let meta = FrameMeta {
            request_id: RequestId(9),
            epoch: Epoch(4),
        };
        encode_frame_raw(&mut frame, MessageKind::Control, meta, &body).unwrap();
        a.send_to(&frame, b.local_addr(), TIMEOUT).await.unwrap();
        let mut buffer = AlignedVec::<16>::with_capacity(UDP_PAYLOAD_BYTES_MAX);
        buffer.resize(UDP_PAYLOAD_BYTES_MAX, 0);
        let (length, _) = b.recv_from(&mut buffer, TIMEOUT).await.unwrap();
        assert_eq!(length, frame.len());
        let (parsed, parsed_len) = parse_frame(&buffer[..length], ChannelKind::Control)
            .unwrap()
            .expect("a whole frame");
        assert_eq!(parsed_len, length);
        assert_eq!(parsed.epoch(), Epoch(4));
        let MessageRef::Control(received) = decode(&parsed).unwrap() else {
            panic!("a control frame decodes to its body");
        };
        assert_eq!(received, &body[..]);
        // One byte over the UDP limit is refused before any syscall.
        let too_large = vec![0u8; UDP_PAYLOAD_BYTES_MAX + 1];
        assert!(matches!(
            a.send_to(&too_large, b.local_addr(), TIMEOUT).await,
            Err(TransportError::Io(error)) if error.kind() == std::io::ErrorKind::InvalidInput
        ));
    });
}

#[test]
fn a_bound_port_cannot_be_bound_twice() {
    on_executor(async {
        let first = DatagramSocket::bind(loopback()).unwrap();
        let error = DatagramSocket::bind(first.local_addr()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    });
}
