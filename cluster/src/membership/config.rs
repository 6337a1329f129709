//! The failure detector's tuning. Defaults follow foca's LAN profile (itself memberlist's
//! `DefaultLANConfig`): probe every second, half a second for a direct ack, suspicion lasts a
//! few probe periods before a member is declared dead.

use super::{DATAGRAM_BYTES_MAX, DATAGRAM_HEADER_BYTES, MAX_TRANSMISSIONS_MIN};
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// How the membership probes, suspects, gossips and leaves. All durations are virtual-time
/// spans the driver's clock is measured in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a random member is probed. A member that answers neither the probe nor the
    /// indirect probes within one period becomes suspect.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly: a high
    /// quantile of the network's round trip. Strictly less than `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute the suspicion before it is declared dead.
    /// Longer: fewer false positives, slower detection.
    pub suspect_to_down_after: Duration,
    /// How often pending updates and state announcements are pushed to a few random members,
    /// besides what rides on probes.
    pub gossip_period: Duration,
    /// How soon a hello is sent again to each static peer that is not (or no longer) a live
    /// member: starts the cluster whatever order nodes start in, and heals full partitions.
    /// The period doubles while some peer stays away.
    pub join_retry_period: Duration,
    /// The longest period between hellos to a peer that stays away (a node gone for good, an
    /// address that is not the one the peer gossips from).
    pub join_retry_period_max: Duration,
    /// How often a node re-announces its own state, so that members that missed it (a lossy
    /// network, a newcomer) learn it without waiting for its next change.
    pub state_refresh_period: Duration,
    /// How long a leaving node keeps gossiping, with its `Leaving` state, before it declares
    /// itself gone: gives the cluster time to learn that it leaves rather than died.
    pub leave_linger: Duration,
    /// How many times each update or announcement is piggybacked before it is dropped.
    pub max_transmissions: u8,
}

impl MembershipConfig {
    /// foca's LAN profile for a cluster of about `expected_members` nodes.
    pub fn lan(expected_members: u32) -> MembershipConfig {
        let members = NonZeroU32::new(expected_members.max(1)).unwrap_or(NonZeroU32::MIN);
        let lan = foca::Config::new_lan(members);
        let gossip_period = lan
            .periodic_gossip
            .as_ref()
            .map_or(Duration::from_millis(200), |gossip| gossip.frequency);
        MembershipConfig {
            probe_period: lan.probe_period,
            probe_rtt: lan.probe_rtt,
            suspect_to_down_after: lan.suspect_to_down_after,
            gossip_period,
            join_retry_period: Duration::from_secs(1),
            join_retry_period_max: Duration::from_secs(30),
            state_refresh_period: Duration::from_secs(10),
            leave_linger: Duration::from_secs(2),
            max_transmissions: lan.max_transmissions.get().max(MAX_TRANSMISSIONS_MIN),
        }
    }

    /// Checks the relations foca relies on; `Err` names the first one broken.
    pub fn validate(&self) -> Result<(), &'static str> {
        let periods = [
            self.probe_period,
            self.probe_rtt,
            self.suspect_to_down_after,
            self.gossip_period,
            self.join_retry_period,
            self.state_refresh_period,
        ];
        if periods.iter().any(Duration::is_zero) {
            return Err("every period must be longer than zero (leave_linger may be zero)");
        }
        if self.join_retry_period_max < self.join_retry_period {
            return Err("join_retry_period_max must be at least join_retry_period");
        }
        if self.probe_rtt >= self.probe_period {
            return Err("probe_rtt must be shorter than probe_period");
        }
        if self.max_transmissions == 0 {
            return Err("max_transmissions must be at least 1");
        }
        Ok(())
    }

    /// The foca configuration this one stands for. Down members are never forgotten by time
    /// (`remove_down_after: None`): the member table is bounded by node ids instead (foca keys
    /// it by node id), and the membership evicts dead members beyond `MEMBERS_MAX`.
    pub(crate) fn to_foca(&self) -> foca::Config {
        let mut foca = foca::Config::new_lan(NonZeroU32::MIN);
        foca.probe_period = self.probe_period;
        foca.probe_rtt = self.probe_rtt;
        foca.suspect_to_down_after = self.suspect_to_down_after;
        foca.max_transmissions = NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN);
        foca.remove_down_after = None;
        foca.notify_down_members = true;
        foca.max_packet_size = NonZeroUsize::new(DATAGRAM_BYTES_MAX - DATAGRAM_HEADER_BYTES)
            .unwrap_or(NonZeroUsize::MIN);
        if let Some(gossip) = foca.periodic_gossip.as_mut() {
            gossip.frequency = self.gossip_period;
        }
        foca
    }
}
