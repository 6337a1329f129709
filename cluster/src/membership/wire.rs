//! The gossip datagram: a fixed 32-byte zerocopy header, then the body.
//!
//! Layout of the header (little-endian):
//! ```text
//!  0  magic       u32       "CGG2" (coregrid gossip, version 2)
//!  4  header_crc  u32       crc32c of bytes 8..32 (everything after this field)
//!  8  kind        u8        1: gossip (a foca packet), 2: hello (see below)
//!  9  flags       u8        0 (no flag is defined; any other value is refused)
//! 10  body_len    u16       exact length of the body
//! 12  body_crc    u32       crc32c of the body
//! 16  cluster_id  [u8; 16]  the sender's cluster
//! ```
//!
//! **Why a header of our own in front of foca's packet.** foca decodes whatever it is given;
//! a datagram from another cluster (a neighbour's gossip port, a stale node from an old
//! deployment) must be refused before it can teach us members. So the cluster id, a magic
//! that carries the version, and two crc32c are checked on every datagram, and only a body
//! that passed them reaches foca. The magic is checked first, so an all-zero header is
//! refused before its crc is even computed (and crc32c of 24 zero bytes is not zero anyway).
//!
//! **Versions.** Version 2 (`CGG2`) carries the data address in every state announcement
//! (52 bytes instead of version 1's 25: see the `announcement` module). A version 1 node could
//! decode a version 2 packet's membership updates but not its announcements, and would see the
//! newer nodes alive but never `Joined`; with the version in the magic, nodes of the two
//! versions refuse each other's datagrams whole (`BadMagic`) instead of half-working together.
//!
//! **Validation order** ([`decode_datagram`]): length within bounds, magic, header crc, cluster
//! id, flags, kind, body length, body crc. Nothing here allocates or panics on any input.
//!
//! **Hello.** A node starting from a static `--peers` list knows addresses, not identities, and
//! foca can only announce to an identity. A hello carries the sender's identity (node id,
//! generation, gossip address) and asks the receiver to announce to it: the receiver's
//! `Announce` makes the newcomer a member on both sides (foca's join sub-protocol).

use super::identity::GossipIdentity;
use super::{DATAGRAM_BYTES_MAX, DATAGRAM_HEADER_BYTES};
use crate::types::ClusterId;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "CGG2" read as a little-endian u32 (see the module docs on versions).
const DATAGRAM_MAGIC: u32 = u32::from_le_bytes(*b"CGG2");

/// Byte offset of the first header byte covered by the header crc.
const HEADER_CRC_COVERS_FROM: usize = 8;

/// The fixed header of every gossip datagram. See the module docs for the layout.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct DatagramHeader {
    magic: U32,
    header_crc: U32,
    kind: u8,
    flags: u8,
    body_len: U16,
    body_crc: U32,
    cluster_id: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<DatagramHeader>() == DATAGRAM_HEADER_BYTES);
const _: () = assert!(std::mem::align_of::<DatagramHeader>() == 1);
const _: () = assert!(DATAGRAM_BYTES_MAX - DATAGRAM_HEADER_BYTES <= u16::MAX as usize);

/// What a datagram's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DatagramKind {
    /// A foca packet (probe, ack, gossip, announce, feed, broadcast...).
    Gossip,
    /// A newcomer's identity: "announce to me" (see the module docs).
    Hello,
}

impl DatagramKind {
    fn to_u8(self) -> u8 {
        match self {
            DatagramKind::Gossip => 1,
            DatagramKind::Hello => 2,
        }
    }

    fn from_u8(kind: u8) -> Option<DatagramKind> {
        match kind {
            1 => Some(DatagramKind::Gossip),
            2 => Some(DatagramKind::Hello),
            _ => None,
        }
    }
}

/// Why a received datagram was refused. Nothing in the membership changed when a datagram is
/// refused: it never reached foca.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Shorter than the fixed header.
    #[error(
        "datagram of {length_bytes} bytes is shorter than the {DATAGRAM_HEADER_BYTES}-byte header"
    )]
    Truncated {
        /// The datagram's length.
        length_bytes: usize,
    },
    /// Longer than any datagram a member sends.
    #[error("datagram of {length_bytes} bytes is longer than the {DATAGRAM_BYTES_MAX}-byte limit")]
    Oversized {
        /// The datagram's length.
        length_bytes: usize,
    },
    /// Not a coregrid gossip datagram, or one of another protocol version.
    #[error("bad magic {actual:#010x} (not coregrid gossip version 2)")]
    BadMagic {
        /// The magic found.
        actual: u32,
    },
    /// The header's crc32c does not match: corruption in transit.
    #[error("header crc32c mismatch")]
    HeaderChecksum,
    /// A datagram of another cluster: never handed to the failure detector.
    #[error("datagram from another cluster {cluster_id:02x?}")]
    ForeignCluster {
        /// The sender's cluster id.
        cluster_id: ClusterId,
    },
    /// A flag bit this version does not know.
    #[error("unknown flags {flags:#04x}")]
    UnknownFlags {
        /// The flags found.
        flags: u8,
    },
    /// A datagram kind this version does not know.
    #[error("unknown datagram kind {kind}")]
    UnknownKind {
        /// The kind found.
        kind: u8,
    },
    /// The header's body length is not the number of bytes that follow it.
    #[error("header says {header_bytes} body bytes, {actual_bytes} follow")]
    BodyLength {
        /// The header's body length.
        header_bytes: usize,
        /// The bytes that follow the header.
        actual_bytes: usize,
    },
    /// The body's crc32c does not match: corruption in transit.
    #[error("body crc32c mismatch")]
    BodyChecksum,
    /// The header is sound but the body does not decode (a hello, a foca packet or a state
    /// announcement). The part of a gossip packet before the bad bytes may have been applied,
    /// as foca applies a packet's updates in order.
    #[error("malformed body: {detail}")]
    Malformed {
        /// What the decoder said.
        detail: String,
    },
}

/// Frames `body` as a datagram of `kind` for `cluster_id`.
pub(crate) fn encode_datagram(cluster_id: ClusterId, kind: DatagramKind, body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= DATAGRAM_BYTES_MAX - DATAGRAM_HEADER_BYTES,
        "a gossip body of {} bytes exceeds the datagram limit",
        body.len()
    );
    let mut header = DatagramHeader {
        magic: U32::new(DATAGRAM_MAGIC),
        header_crc: U32::new(0),
        kind: kind.to_u8(),
        flags: 0,
        body_len: U16::new(body.len() as u16),
        body_crc: U32::new(crc_fast::crc32_iscsi(body)),
        cluster_id: cluster_id.0,
    };
    header.header_crc = U32::new(crc_fast::crc32_iscsi(
        &header.as_bytes()[HEADER_CRC_COVERS_FROM..],
    ));
    let mut datagram = Vec::with_capacity(DATAGRAM_HEADER_BYTES + body.len());
    datagram.extend_from_slice(header.as_bytes());
    datagram.extend_from_slice(body);
    datagram
}

/// Checks a received datagram in the order the module docs give and returns its kind and
/// body. Nothing is allocated unless the datagram is refused for another cluster's id.
pub(crate) fn decode_datagram(
    cluster_id: ClusterId,
    datagram: &[u8],
) -> Result<(DatagramKind, &[u8]), RefusalReason> {
    if datagram.len() > DATAGRAM_BYTES_MAX {
        return Err(RefusalReason::Oversized {
            length_bytes: datagram.len(),
        });
    }
    let Ok((header, body)) = DatagramHeader::ref_from_prefix(datagram) else {
        return Err(RefusalReason::Truncated {
            length_bytes: datagram.len(),
        });
    };
    if header.magic.get() != DATAGRAM_MAGIC {
        return Err(RefusalReason::BadMagic {
            actual: header.magic.get(),
        });
    }
    let header_bytes = &datagram[..DATAGRAM_HEADER_BYTES];
    if crc_fast::crc32_iscsi(&header_bytes[HEADER_CRC_COVERS_FROM..]) != header.header_crc.get() {
        return Err(RefusalReason::HeaderChecksum);
    }
    if header.cluster_id != cluster_id.0 {
        return Err(RefusalReason::ForeignCluster {
            cluster_id: ClusterId(header.cluster_id),
        });
    }
    if header.flags != 0 {
        return Err(RefusalReason::UnknownFlags {
            flags: header.flags,
        });
    }
    let Some(kind) = DatagramKind::from_u8(header.kind) else {
        return Err(RefusalReason::UnknownKind { kind: header.kind });
    };
    if usize::from(header.body_len.get()) != body.len() {
        return Err(RefusalReason::BodyLength {
            header_bytes: usize::from(header.body_len.get()),
            actual_bytes: body.len(),
        });
    }
    if crc_fast::crc32_iscsi(body) != header.body_crc.get() {
        return Err(RefusalReason::BodyChecksum);
    }
    Ok((kind, body))
}

/// Address family tags of a hello's address.
const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;

/// Encodes a hello body: node id u64, generation u64, then the address as a family byte
/// (4 or 6), the ip (4 or 16 bytes), the port u16 and, for IPv6, flowinfo u32 and scope id u32;
/// all little-endian.
pub(crate) fn encode_hello(identity: &GossipIdentity) -> Vec<u8> {
    let mut body = Vec::with_capacity(HELLO_BYTES_MAX);
    body.extend_from_slice(&identity.node.to_le_bytes());
    body.extend_from_slice(&identity.generation.to_le_bytes());
    match identity.gossip_addr {
        SocketAddr::V4(addr) => {
            body.push(FAMILY_IPV4);
            body.extend_from_slice(&addr.ip().octets());
            body.extend_from_slice(&addr.port().to_le_bytes());
        }
        SocketAddr::V6(addr) => {
            body.push(FAMILY_IPV6);
            body.extend_from_slice(&addr.ip().octets());
            body.extend_from_slice(&addr.port().to_le_bytes());
            body.extend_from_slice(&addr.flowinfo().to_le_bytes());
            body.extend_from_slice(&addr.scope_id().to_le_bytes());
        }
    }
    assert!(body.len() <= HELLO_BYTES_MAX);
    body
}

/// Longest hello body: an IPv6 one.
const HELLO_BYTES_MAX: usize = 8 + 8 + 1 + 16 + 2 + 4 + 4;

/// Decodes a hello body; refuses trailing bytes.
pub(crate) fn decode_hello(body: &[u8]) -> Result<GossipIdentity, RefusalReason> {
    let malformed = |detail: &str| RefusalReason::Malformed {
        detail: format!("hello: {detail}"),
    };
    let mut reader = Reader { bytes: body };
    let node = u64::from_le_bytes(reader.take().ok_or_else(|| malformed("no node id"))?);
    let generation = u64::from_le_bytes(reader.take().ok_or_else(|| malformed("no generation"))?);
    let [family] = reader
        .take()
        .ok_or_else(|| malformed("no address family"))?;
    let gossip_addr = match family {
        FAMILY_IPV4 => {
            let ip: [u8; 4] = reader.take().ok_or_else(|| malformed("short ipv4"))?;
            let port = u16::from_le_bytes(reader.take().ok_or_else(|| malformed("no port"))?);
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
        }
        FAMILY_IPV6 => {
            let ip: [u8; 16] = reader.take().ok_or_else(|| malformed("short ipv6"))?;
            let port = u16::from_le_bytes(reader.take().ok_or_else(|| malformed("no port"))?);
            let flowinfo =
                u32::from_le_bytes(reader.take().ok_or_else(|| malformed("no flowinfo"))?);
            let scope_id =
                u32::from_le_bytes(reader.take().ok_or_else(|| malformed("no scope id"))?);
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope_id,
            ))
        }
        other => return Err(malformed(&format!("unknown address family {other}"))),
    };
    if !reader.bytes.is_empty() {
        return Err(malformed("trailing bytes"));
    }
    Ok(GossipIdentity {
        node,
        generation,
        gossip_addr,
    })
}

/// Reads fixed-size fields off the front of a byte slice without panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (field, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: ClusterId = ClusterId(*b"wire-test-clustr");

    #[test]
    fn a_datagram_round_trips_and_every_single_bit_flip_is_refused() {
        let datagram = encode_datagram(CLUSTER, DatagramKind::Gossip, b"some foca bytes");
        assert_eq!(
            decode_datagram(CLUSTER, &datagram),
            Ok((DatagramKind::Gossip, &b"some foca bytes"[..]))
        );
        for bit in 0..datagram.len() * 8 {
            let mut flipped = datagram.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_datagram(CLUSTER, &flipped).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn a_version_1_datagram_is_refused_by_its_magic() {
        let mut datagram = encode_datagram(CLUSTER, DatagramKind::Gossip, b"some foca bytes");
        datagram[..4].copy_from_slice(b"CGG1");
        assert_eq!(
            decode_datagram(CLUSTER, &datagram),
            Err(RefusalReason::BadMagic {
                actual: u32::from_le_bytes(*b"CGG1")
            })
        );
    }

    #[test]
    fn an_all_zero_header_is_refused_by_its_magic() {
        let zeros = [0u8; DATAGRAM_HEADER_BYTES];
        assert_eq!(
            decode_datagram(CLUSTER, &zeros),
            Err(RefusalReason::BadMagic { actual: 0 })
        );
    }

    #[test]
    fn another_clusters_datagram_is_refused_as_foreign() {
        let other = ClusterId(*b"another-cluster!");
        let datagram = encode_datagram(other, DatagramKind::Hello, b"x");
        assert_eq!(
            decode_datagram(CLUSTER, &datagram),
            Err(RefusalReason::ForeignCluster { cluster_id: other })
        );
    }

    #[test]
    fn hellos_round_trip_for_both_families_and_refuse_trailing_bytes() {
        for gossip_addr in [
            "10.1.2.3:7000".parse().unwrap(),
            "[fe80::1%3]:7001".parse().unwrap(),
        ] {
            let identity = GossipIdentity {
                node: 42,
                generation: 7,
                gossip_addr,
            };
            let mut body = encode_hello(&identity);
            assert_eq!(decode_hello(&body), Ok(identity));
            body.push(0);
            assert!(decode_hello(&body).is_err());
        }
    }
}
