//! The election's messages on the wire: one [`ControlDatagram`] per UDP datagram, framed like
//! every other coregrid message (net's 48-byte header with its magic and both crc32c, kind
//! `Control` on the `Control` channel, whose body limit bounds a map's size) with an rkyv body
//! read through rkyv's validating access. A control datagram and a gossip datagram share the
//! control socket; [`is_control_datagram`] tells them apart by the first four bytes.

use crate::election::ControlMessage;
use crate::map::{LeadershipMap, PartitionAssignment};
use crate::types::{ClusterId, Epoch, MapVersion, NodeId, Term};
use coregrid_net::constants::FRAME_MAGIC;
use coregrid_net::frame::{encode_frame_raw, parse_frame, FrameMeta};
use coregrid_net::rkyv::{self, rancor, util::AlignedVec, Archive, Deserialize, Serialize};
use coregrid_net::{ChannelKind, MessageKind};

/// One election message with its sender, as it travels.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct ControlDatagram {
    /// The sender's cluster: a datagram of another cluster is dropped unread.
    pub cluster: ClusterId,
    /// The sender.
    pub from: NodeId,
    /// The message.
    pub message: ControlMessage,
}

/// Why a control datagram was not encoded or not accepted. Nothing changed either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame around the body is bad (magic, checksums, length, kind, channel limit).
    #[error("control frame: {0}")]
    Frame(String),
    /// The body is not a valid archived [`ControlDatagram`].
    #[error("control body: {0}")]
    Body(String),
    /// The datagram holds less or more than exactly one frame.
    #[error("a control datagram holds exactly one frame: {0}")]
    Length(String),
}

/// Whether `bytes` starts like a control datagram (a net frame) rather than gossip.
pub fn is_control_datagram(bytes: &[u8]) -> bool {
    bytes
        .first_chunk::<4>()
        .is_some_and(|magic| u32::from_le_bytes(*magic) == FRAME_MAGIC)
}

/// Appends `datagram` to `out` as one frame; returns its length. Refuses a body over the
/// control channel's limit (nothing is appended then).
pub fn encode(out: &mut Vec<u8>, datagram: &ControlDatagram) -> Result<usize, WireError> {
    let body = rkyv::to_bytes::<rancor::Error>(datagram)
        .map_err(|error| WireError::Body(error.to_string()))?;
    encode_frame_raw(out, MessageKind::Control, FrameMeta::default(), &body)
        .map_err(|error| WireError::Frame(error.to_string()))
}

/// Reads one control datagram: checks the frame, then the body through rkyv's validation,
/// then copies it out (the election takes owned messages). Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<ControlDatagram, WireError> {
    // The body must lie at an aligned address for rkyv: copy once into an aligned buffer
    // (datagrams are small and rare).
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let (frame, length) = match parse_frame(&aligned, ChannelKind::Control) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Err(WireError::Length("truncated".into())),
        Err(error) => return Err(WireError::Frame(error.to_string())),
    };
    if length != aligned.len() {
        return Err(WireError::Length(format!(
            "{} bytes after the frame",
            aligned.len() - length
        )));
    }
    if frame.kind() != MessageKind::Control {
        return Err(WireError::Frame(format!("kind {}", frame.kind())));
    }
    let archived = rkyv::access::<ArchivedControlDatagram, rancor::Error>(frame.body())
        .map_err(|error| WireError::Body(error.to_string()))?;
    rkyv::deserialize::<ControlDatagram, rancor::Error>(archived)
        .map_err(|error| WireError::Body(error.to_string()))
}

/// The most partitions a leadership map may have for every message carrying it to fit one
/// control datagram, with `replicas` replicas per partition.
///
/// Maps travel whole, in one datagram (the largest: a [`ControlMessage::ClaimReply`] carrying
/// one); a larger map could never be sent, so a cluster configured for one would never agree
/// on a map. The node refuses such a configuration at start instead (sending maps in pieces is
/// not built). Found by encoding maps of the largest ids, so it is exact for this encoding.
pub fn partitions_max_per_datagram(replicas: usize) -> u32 {
    let fits = |partitions: u32| {
        encode(&mut Vec::new(), &largest_claim_reply(partitions, replicas)).is_ok()
    };
    // `fits` is monotone in the partition count: binary search for the last that fits.
    let (mut fitting, mut too_many) = (0u32, coregrid_net::constants::PARTITIONS_MAX + 1);
    while too_many - fitting > 1 {
        let middle = fitting + (too_many - fitting) / 2;
        if fits(middle) {
            fitting = middle;
        } else {
            too_many = middle;
        }
    }
    fitting
}

/// The largest message that carries a map: a granted `ClaimReply` with a map of `partitions`
/// partitions of `replicas` replicas each, every id at its largest.
fn largest_claim_reply(partitions: u32, replicas: usize) -> ControlDatagram {
    ControlDatagram {
        cluster: ClusterId([u8::MAX; 16]),
        from: NodeId(u64::MAX),
        message: ControlMessage::ClaimReply {
            term: Term(u64::MAX),
            granted: true,
            stored: MapVersion {
                term: Term(u64::MAX),
                epoch: Epoch(u64::MAX),
            },
            map: Some(largest_map(partitions, replicas)),
        },
    }
}

/// A map of `partitions` partitions of `replicas` replicas each, every id at its largest.
fn largest_map(partitions: u32, replicas: usize) -> LeadershipMap {
    LeadershipMap {
        epoch: Epoch(u64::MAX),
        term: Term(u64::MAX),
        partitions: (0..partitions)
            .map(|_| PartitionAssignment {
                leader: Some(NodeId(u64::MAX)),
                replicas: vec![NodeId(u64::MAX); replicas],
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{LeadershipMap, PartitionAssignment};
    use crate::types::{Epoch, MapVersion, Term};

    fn samples() -> Vec<ControlDatagram> {
        let map = LeadershipMap {
            epoch: Epoch(4),
            term: Term(2),
            partitions: (0..64)
                .map(|partition| PartitionAssignment {
                    leader: Some(NodeId(partition % 3)),
                    replicas: vec![NodeId(partition % 3), NodeId((partition + 1) % 3)],
                })
                .collect(),
        };
        let version = MapVersion {
            term: Term(2),
            epoch: Epoch(4),
        };
        [
            ControlMessage::Claim {
                term: Term(3),
                stored: version,
            },
            ControlMessage::Propose {
                term: Term(2),
                map: map.clone(),
            },
            ControlMessage::ClaimReply {
                term: Term(3),
                granted: true,
                stored: version,
                map: Some(map),
            },
            ControlMessage::RingElection {
                term: Term(1),
                initiator: NodeId(1),
                round: 9,
                collected: vec![NodeId(1), NodeId(2)],
                highest_term: Term(1),
            },
        ]
        .into_iter()
        .map(|message| ControlDatagram {
            cluster: ClusterId::from_name("coregrid").unwrap(),
            from: NodeId(17),
            message,
        })
        .collect()
    }

    #[test]
    fn datagrams_round_trip_and_are_told_from_gossip() {
        for datagram in samples() {
            let mut out = Vec::new();
            let length = encode(&mut out, &datagram).unwrap();
            assert_eq!(length, out.len());
            assert!(is_control_datagram(&out));
            assert_eq!(decode(&out).unwrap(), datagram);
        }
        assert!(!is_control_datagram(b"CGG1 gossip"));
        assert!(!is_control_datagram(b""));
    }

    #[test]
    fn the_largest_map_that_fits_is_found_exactly() {
        for replicas in [1, 3, 5] {
            let max = partitions_max_per_datagram(replicas);
            assert!(max >= 512, "{replicas} replicas: only {max} partitions fit");
            let propose = |partitions| ControlDatagram {
                cluster: ClusterId([7; 16]),
                from: NodeId(1),
                message: ControlMessage::Propose {
                    term: Term(9),
                    map: largest_map(partitions, replicas),
                },
            };
            // Every map-carrying message of a map at the limit is sent; one more partition
            // and the largest one no longer is.
            assert!(encode(&mut Vec::new(), &propose(max)).is_ok());
            assert!(encode(&mut Vec::new(), &largest_claim_reply(max, replicas)).is_ok());
            assert!(
                encode(&mut Vec::new(), &largest_claim_reply(max + 1, replicas)).is_err(),
                "{replicas} replicas: {} partitions still fit",
                max + 1
            );
            assert!(
                partitions_max_per_datagram(replicas + 1) < max,
                "more replicas, fewer partitions"
            );
        }
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused_without_panic() {
        let mut out = Vec::new();
        encode(&mut out, &samples()[0]).unwrap();
        for length in 0..out.len() {
            assert!(decode(&out[..length]).is_err(), "truncated to {length}");
        }
        for index in 0..out.len() {
            let mut flipped = out.clone();
            flipped[index] ^= 0x5a;
            assert!(decode(&flipped).is_err(), "byte {index} changed");
        }
        let mut longer = out.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(decode(&longer).is_err());
    }
}
