//! A node's own state (`Joining` -> `JoinedSyncing` -> `Joined` -> `Leaving`) and its data
//! address, spread as a foca custom broadcast.
//!
//! foca knows whether a member is alive, suspect or down; what the node says of itself (is it
//! caught up, is it leaving, where its data shards serve) rides on foca's gossip as a 52-byte
//! announcement, a zerocopy record (style.md rule 7; the datagram around it carries the
//! crc32c):
//! ```text
//!  0  node          u64       the announcing node
//!  8  generation    u64       its identity's generation (which life of the node)
//! 16  version       u64       grows with every change of state within one life
//! 24  state         u8        1 joining, 2 joined-syncing, 3 joined, 4 leaving
//! 25  data_family   u8        0 no data address, 4 IPv4, 6 IPv6
//! 26  data_port     u16       the data address's port (0 only when there is none)
//! 28  data_ip       [u8; 16]  IPv4: 4 bytes then 12 zero bytes; IPv6: 16 bytes; none: zero
//! 44  data_flowinfo u32       IPv6 only, else 0
//! 48  data_scope_id u32       IPv6 only, else 0
//! ```
//! **The data address** is the socket address of the node's data shard 0: a TCP address where
//! a `Topology` request tells which port serves which partitions. A follower needs it to pull
//! from the leader of a partition, and only gossip reaches every node, so it rides here rather
//! than in foca's identity (which is copied into every probe and update: a fixed-size
//! announcement, sent until it stops being new, costs less). It is fixed for one life of the
//! node. A membership without data shards (tests, simulators) announces none (family 0).
//! Every announcement has exactly one encoding: bytes an address does not use must be zero
//! and a port must not be 0, so a damaged record is refused rather than read as another
//! address.
//!
//! Each node keeps, per node and generation, the announcement of the highest version in a
//! table shared with the foca broadcast handler, which passes on only what is new to it (so
//! dissemination stops), and never believes what others say about its own node. The view reads
//! the announcement of the generation foca currently knows for the node; generations below it
//! are pruned. Keeping generations apart (rather than only the newest overall) means that an
//! announcement of a generation that never lived (a bug, a forged or mangled packet) cannot
//! shadow the real ones; at most [`ANNOUNCED_GENERATIONS_MAX`] generations are kept per node.
//! `Dead` is never announced: only the failure detector declares it.

use super::identity::GossipIdentity;
use crate::constants::MEMBERS_MAX;
use crate::types::NodeState;
use foca::{BroadcastHandler, Invalidates};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::rc::Rc;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Most generations of one node whose announcements are kept at once: the live one, a newer
/// one that foca has not seen yet (a restart in progress), and slack.
pub(crate) const ANNOUNCED_GENERATIONS_MAX: usize = 3;

/// Length of an encoded announcement (25 before data addresses were announced; the gossip
/// datagram's magic changed with it, so nodes of the two formats refuse each other whole).
pub(crate) const ANNOUNCEMENT_BYTES: usize = 52;

/// `data_family` of an announcement without a data address.
const DATA_FAMILY_NONE: u8 = 0;
/// `data_family` of an IPv4 data address.
const DATA_FAMILY_IPV4: u8 = 4;
/// `data_family` of an IPv6 data address.
const DATA_FAMILY_IPV6: u8 = 6;

/// What a node says of itself (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub(crate) node: u64,
    pub(crate) generation: u64,
    pub(crate) version: u64,
    pub(crate) state: NodeState,
    /// Where the node's data shard 0 serves (see the module docs); `None` when the node has no
    /// data shards. Never with port 0.
    pub(crate) data_addr: Option<SocketAddr>,
}

/// The encoded announcement (see the module docs for the layout).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct AnnouncementRecord {
    node: U64,
    generation: U64,
    version: U64,
    state: u8,
    data_family: u8,
    data_port: U16,
    data_ip: [u8; 16],
    data_flowinfo: U32,
    data_scope_id: U32,
}

const _: () = assert!(std::mem::size_of::<AnnouncementRecord>() == ANNOUNCEMENT_BYTES);
const _: () = assert!(std::mem::align_of::<AnnouncementRecord>() == 1);

/// Why an announcement did not decode. foca stops reading the packet's broadcasts there;
/// nothing of this announcement was taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnnouncementError {
    /// Not exactly [`ANNOUNCEMENT_BYTES`] long (a truncated record, or one of another format).
    #[error("a state announcement is {ANNOUNCEMENT_BYTES} bytes, got {length_bytes}")]
    Length { length_bytes: usize },
    /// A state byte outside 1..=4.
    #[error("unknown announced state {state}")]
    UnknownState { state: u8 },
    /// A data address family other than 0 (none), 4 or 6.
    #[error("unknown data address family {family}")]
    UnknownAddressFamily { family: u8 },
    /// A byte the data address family does not use is not zero: a damaged record.
    #[error("data address of family {family} with non-zero unused bytes")]
    UnusedBytesSet { family: u8 },
    /// A data address with port 0, which nobody can dial and no node announces.
    #[error("data address {data_addr} has port 0")]
    ZeroPort { data_addr: SocketAddr },
}

impl Announcement {
    pub(crate) fn encode(&self) -> [u8; ANNOUNCEMENT_BYTES] {
        let state = match self.state {
            NodeState::Joining => 1,
            NodeState::JoinedSyncing => 2,
            NodeState::Joined => 3,
            NodeState::Leaving => 4,
            NodeState::Dead => unreachable!("Dead is never announced (checked by the caller)"),
        };
        let mut record = AnnouncementRecord {
            node: U64::new(self.node),
            generation: U64::new(self.generation),
            version: U64::new(self.version),
            state,
            data_family: DATA_FAMILY_NONE,
            data_port: U16::new(0),
            data_ip: [0; 16],
            data_flowinfo: U32::new(0),
            data_scope_id: U32::new(0),
        };
        match self.data_addr {
            None => {}
            Some(SocketAddr::V4(addr)) => {
                record.data_family = DATA_FAMILY_IPV4;
                record.data_port = U16::new(addr.port());
                record.data_ip[..4].copy_from_slice(&addr.ip().octets());
            }
            Some(SocketAddr::V6(addr)) => {
                record.data_family = DATA_FAMILY_IPV6;
                record.data_port = U16::new(addr.port());
                record.data_ip = addr.ip().octets();
                record.data_flowinfo = U32::new(addr.flowinfo());
                record.data_scope_id = U32::new(addr.scope_id());
            }
        }
        // The pair of the decoder's check (style.md rule 6): `Membership::new` refuses port 0.
        assert!(
            self.data_addr.is_none_or(|addr| addr.port() != 0),
            "a data address with port 0 is never announced"
        );
        let mut bytes = [0u8; ANNOUNCEMENT_BYTES];
        bytes.copy_from_slice(record.as_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Announcement, AnnouncementError> {
        let Ok(record) = AnnouncementRecord::ref_from_bytes(bytes) else {
            return Err(AnnouncementError::Length {
                length_bytes: bytes.len(),
            });
        };
        let state = match record.state {
            1 => NodeState::Joining,
            2 => NodeState::JoinedSyncing,
            3 => NodeState::Joined,
            4 => NodeState::Leaving,
            state => return Err(AnnouncementError::UnknownState { state }),
        };
        Ok(Announcement {
            node: record.node.get(),
            generation: record.generation.get(),
            version: record.version.get(),
            state,
            data_addr: decode_data_addr(record)?,
        })
    }
}

/// The data address of `record`, checked to be the one encoding of it (see the module docs).
fn decode_data_addr(record: &AnnouncementRecord) -> Result<Option<SocketAddr>, AnnouncementError> {
    let family = record.data_family;
    let port = record.data_port.get();
    let ip = record.data_ip;
    let (flowinfo, scope_id) = (record.data_flowinfo.get(), record.data_scope_id.get());
    let data_addr = match family {
        DATA_FAMILY_NONE => {
            if port != 0 || ip != [0; 16] || flowinfo != 0 || scope_id != 0 {
                return Err(AnnouncementError::UnusedBytesSet { family });
            }
            return Ok(None);
        }
        DATA_FAMILY_IPV4 => {
            let (octets, unused) = ip.split_at(4);
            if unused.iter().any(|&byte| byte != 0) || flowinfo != 0 || scope_id != 0 {
                return Err(AnnouncementError::UnusedBytesSet { family });
            }
            let mut ipv4 = [0u8; 4];
            ipv4.copy_from_slice(octets);
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ipv4), port))
        }
        DATA_FAMILY_IPV6 => SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope_id,
        )),
        family => return Err(AnnouncementError::UnknownAddressFamily { family }),
    };
    if port == 0 {
        return Err(AnnouncementError::ZeroPort { data_addr });
    }
    Ok(Some(data_addr))
}

/// What the announcements say, shared between the membership and its foca broadcast handler
/// (foca owns the handler and offers no way back to it).
#[derive(Debug, Default)]
pub(crate) struct AnnouncementBook {
    /// The newest announcement of every node (by node, then generation).
    pub(crate) by_node: BTreeMap<u64, BTreeMap<u64, Announcement>>,
    /// The newest announcement about our own node that others sent us since the membership
    /// last looked. The origin is the authority on its own state: when someone claims a
    /// version of our generation that we did not send (a mangled or forged packet), every
    /// node that took it would ignore our real announcements of lower versions, so the
    /// membership re-announces above it.
    pub(crate) claim_about_us: Option<Announcement>,
}

/// The announcement book of one membership. Single-threaded: the control shard owns both
/// users.
pub(crate) type AnnouncementTable = Rc<RefCell<AnnouncementBook>>;

/// foca's broadcast key: a newer announcement of a node's generation replaces the older one
/// still waiting to be sent.
pub(crate) struct AnnouncementKey {
    node: u64,
    generation: u64,
}

impl Invalidates for AnnouncementKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.generation == other.generation
    }
}

/// Decides which announcements foca keeps disseminating (see the module docs).
pub(crate) struct AnnouncementHandler {
    pub(crate) table: AnnouncementTable,
    pub(crate) own_node: u64,
}

impl BroadcastHandler<GossipIdentity> for AnnouncementHandler {
    type Key = AnnouncementKey;
    type Error = AnnouncementError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&GossipIdentity>,
    ) -> Result<Option<AnnouncementKey>, AnnouncementError> {
        let announcement = Announcement::decode(data)?;
        let key = AnnouncementKey {
            node: announcement.node,
            generation: announcement.generation,
        };
        let own = sender.is_none();
        let mut book = self.table.borrow_mut();
        if !own && announcement.node == self.own_node {
            // What others say of us is at best an echo of what we said: we know better, but
            // the membership checks that the echo is not newer than what we said.
            let newer = book.claim_about_us.is_none_or(|claim| {
                (claim.generation, claim.version) < (announcement.generation, announcement.version)
            });
            if newer {
                book.claim_about_us = Some(announcement);
            }
            return Ok(None);
        }
        let table = &mut book.by_node;
        if !table.contains_key(&announcement.node) && table.len() >= MEMBERS_MAX {
            tracing::warn!(
                node = announcement.node,
                "state announcement dropped: {MEMBERS_MAX} nodes already announced"
            );
            return Ok(None);
        }
        let generations = table.entry(announcement.node).or_default();
        match generations.get(&announcement.generation) {
            // Our own announcement is re-added on purpose (a refresh for newcomers).
            Some(known) if own && known.version == announcement.version => Ok(Some(key)),
            Some(known) if known.version >= announcement.version => Ok(None),
            _ => {
                generations.insert(announcement.generation, announcement);
                if generations.len() > ANNOUNCED_GENERATIONS_MAX {
                    // The oldest life is the least useful: the view prunes it soon anyway.
                    generations.pop_first();
                }
                Ok(Some(key))
            }
        }
    }
}

/// The newest announcement node `node` made in its life `generation`, if any arrived.
pub(crate) fn announced(
    book: &AnnouncementBook,
    node: u64,
    generation: u64,
) -> Option<Announcement> {
    book.by_node.get(&node)?.get(&generation).copied()
}

/// The state node `node` announced for `generation`, if any.
#[cfg(test)]
fn announced_state(book: &AnnouncementBook, node: u64, generation: u64) -> Option<NodeState> {
    announced(book, node, generation).map(|announcement| announcement.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> AnnouncementHandler {
        AnnouncementHandler {
            table: AnnouncementTable::default(),
            own_node: 1,
        }
    }

    fn sender() -> GossipIdentity {
        GossipIdentity {
            node: 9,
            generation: 1,
            gossip_addr: "10.0.0.9:7000".parse().unwrap(),
        }
    }

    fn announcement(node: u64, generation: u64, version: u64, state: NodeState) -> Vec<u8> {
        Announcement {
            node,
            generation,
            version,
            state,
            data_addr: Some(SocketAddr::from(([10, 0, 0, node as u8], 7000))),
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn only_newer_announcements_are_kept_and_passed_on() {
        let mut handler = handler();
        let from = sender();
        let joined = announcement(2, 5, 3, NodeState::Joined);
        assert!(handler
            .receive_item(&joined, Some(&from))
            .unwrap()
            .is_some());
        assert!(handler
            .receive_item(&joined, Some(&from))
            .unwrap()
            .is_none());
        let older = announcement(2, 5, 2, NodeState::JoinedSyncing);
        assert!(handler.receive_item(&older, Some(&from)).unwrap().is_none());
        let restarted = announcement(2, 6, 1, NodeState::Joining);
        assert!(handler
            .receive_item(&restarted, Some(&from))
            .unwrap()
            .is_some());
        let table = handler.table.borrow();
        assert_eq!(announced_state(&table, 2, 6), Some(NodeState::Joining));
        assert_eq!(announced_state(&table, 2, 5), Some(NodeState::Joined));
    }

    #[test]
    fn an_announcement_of_a_generation_that_never_lived_does_not_shadow_the_real_one() {
        let mut handler = handler();
        let from = sender();
        let forged = announcement(2, 1_000, 9, NodeState::Leaving);
        assert!(handler
            .receive_item(&forged, Some(&from))
            .unwrap()
            .is_some());
        let real = announcement(2, 5, 1, NodeState::Joined);
        assert!(handler.receive_item(&real, Some(&from)).unwrap().is_some());
        assert_eq!(
            announced_state(&handler.table.borrow(), 2, 5),
            Some(NodeState::Joined)
        );
    }

    #[test]
    fn claims_about_ourselves_from_others_are_ignored_and_bad_bytes_are_errors() {
        let mut handler = handler();
        let about_us = announcement(1, 99, 99, NodeState::Leaving);
        assert!(handler
            .receive_item(&about_us, Some(&sender()))
            .unwrap()
            .is_none());
        assert!(handler.table.borrow().by_node.is_empty());
        assert_eq!(
            handler
                .table
                .borrow()
                .claim_about_us
                .map(|claim| claim.version),
            Some(99)
        );
        let mut bad_state = announcement(2, 1, 1, NodeState::Joined);
        bad_state[24] = 5;
        assert!(handler.receive_item(&bad_state, Some(&sender())).is_err());
        assert!(handler
            .receive_item(&bad_state[..24], Some(&sender()))
            .is_err());
    }

    /// One announcement of every data address shape the encoding knows.
    fn samples() -> Vec<Announcement> {
        let data_addrs: [Option<SocketAddr>; 5] = [
            None,
            Some("10.1.2.3:7000".parse().unwrap()),
            Some("255.255.255.255:65535".parse().unwrap()),
            Some("[2001:db8::7]:7100".parse().unwrap()),
            Some(SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                1,
                0x000a_bcde,
                u32::MAX,
            ))),
        ];
        data_addrs
            .into_iter()
            .zip([
                NodeState::Joining,
                NodeState::JoinedSyncing,
                NodeState::Joined,
                NodeState::Leaving,
                NodeState::Joined,
            ])
            .enumerate()
            .map(|(index, (data_addr, state))| Announcement {
                node: 0x0102_0304_0506_0708 + index as u64,
                generation: u64::MAX - index as u64,
                version: 1 << index,
                state,
                data_addr,
            })
            .collect()
    }

    #[test]
    fn announcements_round_trip_with_ipv4_ipv6_and_no_data_address() {
        for sample in samples() {
            let bytes = sample.encode();
            assert_eq!(bytes.len(), ANNOUNCEMENT_BYTES);
            assert_eq!(Announcement::decode(&bytes), Ok(sample), "{sample:?}");
        }
        // The layout of the module docs, byte for byte.
        let ipv4 = Announcement {
            node: 1,
            generation: 2,
            version: 3,
            state: NodeState::Joined,
            data_addr: Some("10.1.2.3:7000".parse().unwrap()),
        }
        .encode();
        assert_eq!(ipv4[0..8], 1u64.to_le_bytes());
        assert_eq!(ipv4[16..24], 3u64.to_le_bytes());
        assert_eq!(ipv4[24..26], [3, DATA_FAMILY_IPV4]);
        assert_eq!(ipv4[26..28], 7000u16.to_le_bytes());
        assert_eq!(ipv4[28..32], [10, 1, 2, 3]);
        assert!(ipv4[32..].iter().all(|&byte| byte == 0));
        // No address is its own family, distinct from every address (even 0.0.0.0).
        let none = Announcement {
            data_addr: None,
            ..Announcement::decode(&ipv4).unwrap()
        }
        .encode();
        assert_eq!(none[25], DATA_FAMILY_NONE);
        assert!(none[25..].iter().all(|&byte| byte == 0));
        let unspecified = Announcement {
            data_addr: Some("0.0.0.0:7000".parse().unwrap()),
            ..Announcement::decode(&ipv4).unwrap()
        };
        assert_eq!(Announcement::decode(&unspecified.encode()), Ok(unspecified));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for sample in samples() {
            let bytes = sample.encode();
            for length in 0..ANNOUNCEMENT_BYTES {
                assert_eq!(
                    Announcement::decode(&bytes[..length]),
                    Err(AnnouncementError::Length {
                        length_bytes: length
                    })
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert_eq!(
                Announcement::decode(&longer),
                Err(AnnouncementError::Length {
                    length_bytes: ANNOUNCEMENT_BYTES + 1
                })
            );
        }
    }

    /// Every bit flip, and every byte set to each of a few values, either is refused or
    /// decodes to an announcement that differs from the original in exactly the field the
    /// byte belongs to; a data address that decodes always encodes back to the same bytes
    /// (one encoding per announcement), and none has port 0.
    #[test]
    fn every_flipped_or_overwritten_byte_is_refused_or_changes_only_its_own_field() {
        let mut decoded = 0;
        let mut refused = 0;
        for sample in samples() {
            let bytes = sample.encode();
            let mut damaged_versions = Vec::new();
            for position in 0..ANNOUNCEMENT_BYTES {
                for bit in 0..8 {
                    let mut damaged = bytes;
                    damaged[position] ^= 1 << bit;
                    damaged_versions.push((position, damaged));
                }
                for value in [0x00, 0x01, 0x04, 0x06, 0x7f, 0xff] {
                    let mut damaged = bytes;
                    damaged[position] = value;
                    damaged_versions.push((position, damaged));
                }
            }
            for (position, damaged) in damaged_versions {
                match Announcement::decode(&damaged) {
                    Err(_) => refused += 1,
                    Ok(announcement) => {
                        decoded += 1;
                        assert_eq!(
                            announcement.encode(),
                            damaged,
                            "byte {position} of {sample:?}: decodes to {announcement:?}, \
                             which encodes differently"
                        );
                        assert!(announcement.data_addr.is_none_or(|addr| addr.port() != 0));
                        let unchanged = match position {
                            0..8 => Announcement {
                                node: sample.node,
                                ..announcement
                            },
                            8..16 => Announcement {
                                generation: sample.generation,
                                ..announcement
                            },
                            16..24 => Announcement {
                                version: sample.version,
                                ..announcement
                            },
                            24 => Announcement {
                                state: sample.state,
                                ..announcement
                            },
                            _ => Announcement {
                                data_addr: sample.data_addr,
                                ..announcement
                            },
                        };
                        assert_eq!(unchanged, sample, "byte {position}");
                    }
                }
            }
        }
        // Both outcomes happen: the test would not notice a decoder that refuses everything
        // or takes everything otherwise.
        assert!(
            decoded > 0 && refused > 0,
            "{decoded} decoded, {refused} refused"
        );
    }

    #[test]
    fn damaged_data_addresses_are_refused_with_the_reason() {
        let with = |data_addr: Option<SocketAddr>| {
            Announcement {
                node: 2,
                generation: 1,
                version: 1,
                state: NodeState::Joined,
                data_addr,
            }
            .encode()
        };
        let mut unknown_family = with(None);
        unknown_family[25] = 5;
        assert_eq!(
            Announcement::decode(&unknown_family),
            Err(AnnouncementError::UnknownAddressFamily { family: 5 })
        );
        let mut port_without_address = with(None);
        port_without_address[26] = 1;
        assert_eq!(
            Announcement::decode(&port_without_address),
            Err(AnnouncementError::UnusedBytesSet { family: 0 })
        );
        let mut ipv4_with_scope = with(Some("10.0.0.2:7000".parse().unwrap()));
        ipv4_with_scope[48] = 1;
        assert_eq!(
            Announcement::decode(&ipv4_with_scope),
            Err(AnnouncementError::UnusedBytesSet { family: 4 })
        );
        let mut ipv4_with_ipv6_bytes = with(Some("10.0.0.2:7000".parse().unwrap()));
        ipv4_with_ipv6_bytes[43] = 1;
        assert_eq!(
            Announcement::decode(&ipv4_with_ipv6_bytes),
            Err(AnnouncementError::UnusedBytesSet { family: 4 })
        );
        let mut port_zero = with(Some("[::1]:7000".parse().unwrap()));
        port_zero[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(
            Announcement::decode(&port_zero),
            Err(AnnouncementError::ZeroPort {
                data_addr: "[::1]:0".parse().unwrap()
            })
        );
    }

    #[test]
    fn the_data_address_is_kept_per_generation_with_the_state() {
        let mut handler = handler();
        let from = sender();
        handler
            .receive_item(&announcement(2, 5, 1, NodeState::Joining), Some(&from))
            .unwrap();
        let restarted = Announcement {
            node: 2,
            generation: 6,
            version: 1,
            state: NodeState::Joining,
            data_addr: Some("[2001:db8::2]:7100".parse().unwrap()),
        };
        handler
            .receive_item(&restarted.encode(), Some(&from))
            .unwrap();
        let table = handler.table.borrow();
        assert_eq!(
            announced(&table, 2, 5).and_then(|announcement| announcement.data_addr),
            Some("10.0.0.2:7000".parse().unwrap())
        );
        assert_eq!(announced(&table, 2, 6), Some(restarted));
        assert_eq!(announced(&table, 3, 6), None);
    }
}
