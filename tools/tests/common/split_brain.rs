//! The 2|3 split of a five-node cluster (the scenario 2), shared by
//! `cluster_split_brain.rs` (the test-only fault layer) and `cluster_split_brain_nftables.rs`
//! (nftables in a network namespace): the controller and one other node are cut off from the
//! other three.
//! - Only the majority elects: the three elect a controller among them in a higher term and
//!   publish a higher epoch; the two never raise their term nor publish an epoch, and the old
//!   controller steps down (check-quorum).
//! - The minority refuses writes: each partition a minority node leads answers `Unavailable`
//!   (no write lease), while the partitions the majority leads keep taking writes.
//! - Heal: the two adopt the majority's term, controller and epoch, without a new election, and
//!   every partition takes writes again through its leader in the healed map (a minority-led
//!   partition may have failed over to the majority side during the split).
//!
//! Times (split to majority controller, to minority refusals, heal to agreement) are printed,
//! never asserted.

use crate::cluster::{key_of_partition, wait_until, TestCluster, PARTITIONS};
use std::time::Instant;

/// The error text of a write refused for want of the lease (docs/cluster.md).
const NO_LEASE: &str = "no write lease";
/// `coregrid put`'s exit code for an unavailable cluster.
const EXIT_UNREACHABLE: i32 = 3;

fn writable(cluster: &TestCluster, leader: usize, partition: usize, round: &str) {
    let key = key_of_partition(partition, "split");
    let value = format!("{round}-{partition}");
    wait_until(
        &format!("a write to partition {partition} through its leader, node {leader} ({round})"),
        || {
            let outcome = cluster.put(leader, &key, &value);
            if outcome.exit_code == 0 {
                Ok(())
            } else {
                Err(format!("{outcome:?}"))
            }
        },
    );
}

/// Runs the scenario on a started five-node cluster.
pub fn two_three_split(cluster: &mut TestCluster) {
    assert_eq!(cluster.len(), 5);
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let before = wait_until("one controller and one map on all five nodes", || {
        cluster.agreement(&everyone)
    });
    let (term_before, epoch_before) = (before[0].term, before[0].epoch);
    let leaders: Vec<usize> = before[0]
        .leaders
        .iter()
        .map(|leader| cluster.index_of(leader.expect("every partition led")))
        .collect();
    let old_controller = cluster.index_of(before[0].controller.expect("a controller"));
    // The controller and a node that leads a partition, if another one does.
    let partner = (1..cluster.len())
        .map(|step| (old_controller + step) % cluster.len())
        .find(|index| leaders.contains(index))
        .unwrap_or((old_controller + 1) % cluster.len());
    let minority = vec![old_controller, partner];
    let majority: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|index| !minority.contains(index))
        .collect();
    let minority_led: Vec<usize> = (0..PARTITIONS as usize)
        .filter(|&partition| minority.contains(&leaders[partition]))
        .collect();
    let majority_led: Vec<usize> = (0..PARTITIONS as usize)
        .filter(|&partition| majority.contains(&leaders[partition]))
        .collect();
    println!(
        "term {term_before}, epoch {epoch_before}, controller node {old_controller}; \
         minority {minority:?} leads partitions {minority_led:?}, majority {majority:?} leads \
         {majority_led:?}"
    );
    assert!(
        !minority_led.is_empty(),
        "the minority leads some partition"
    );
    cluster.create_collection();
    for (partition, &leader) in leaders.iter().enumerate() {
        writable(cluster, leader, partition, "before");
    }

    cluster.split(&[&minority, &majority]);
    let split_at = Instant::now();
    let elected = wait_until(
        "the majority to elect a controller among it, in a higher term, with a higher epoch",
        || {
            // A minority-led partition whose replica set has a majority on the minority side
            // cannot fail over (no majority of its replicas reports): no leader there.
            let seen = cluster.agreement_on_maps(&majority, false)?;
            if seen[0].term > term_before && seen[0].epoch > epoch_before {
                Ok(seen)
            } else {
                Err(format!("no new term and epoch yet: {seen:?}"))
            }
        },
    );
    println!(
        "split -> majority controller node {} in term {} with epoch {}: {:?}",
        cluster.index_of(elected[0].controller.unwrap()),
        elected[0].term,
        elected[0].epoch,
        split_at.elapsed()
    );
    for partition in &minority_led {
        let leader = leaders[*partition];
        let key = key_of_partition(*partition, "split");
        wait_until(
            &format!("node {leader} (minority) to refuse a write to partition {partition}, which it leads"),
            || {
                let outcome = cluster.put(leader, &key, "written-by-the-minority");
                let error = outcome.json["error"].as_str().unwrap_or_default();
                if outcome.exit_code == EXIT_UNREACHABLE && error.contains(NO_LEASE) {
                    Ok(())
                } else {
                    Err(format!("{outcome:?}"))
                }
            },
        );
    }
    println!(
        "split -> every minority-led partition refuses writes: {:?}",
        split_at.elapsed()
    );
    // The minority never elects: same term and epoch, and its old controller steps down.
    let minority_seen = wait_until("the minority's old controller to step down", || {
        let seen = cluster.statuses(&minority)?;
        for status in &seen {
            assert_eq!(
                status.term, term_before,
                "a minority node raised its term: {seen:?}"
            );
            assert_eq!(
                status.epoch, epoch_before,
                "a minority node published an epoch: {seen:?}"
            );
        }
        if seen.iter().any(|status| status.is_controller()) {
            Err(format!("still a controller in the minority: {seen:?}"))
        } else {
            Ok(seen)
        }
    });
    println!("minority while split: {minority_seen:?}");
    // `coregrid status` says why: the minority holds no lease, the majority does.
    for status in &minority_seen {
        assert_eq!(status.lease, Some(false), "{minority_seen:?}");
    }
    wait_until("the majority to show the write lease in its status", || {
        let seen = cluster.statuses(&majority)?;
        if seen.iter().all(|status| status.lease == Some(true)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    // The majority's partitions still take writes.
    for &partition in &majority_led {
        writable(cluster, leaders[partition], partition, "split");
    }
    // Still refused: the lease did not come back.
    for &partition in &minority_led {
        let outcome = cluster.put(
            leaders[partition],
            &key_of_partition(partition, "split"),
            "x",
        );
        assert_eq!(outcome.exit_code, EXIT_UNREACHABLE, "{outcome:?}");
    }

    cluster.heal();
    let healed_at = Instant::now();
    let healed = wait_until(
        "all five to follow the majority's controller, in its term, with one epoch",
        || {
            let seen = cluster.agreement(&everyone)?;
            if seen[0].term >= elected[0].term && seen[0].epoch >= elected[0].epoch {
                Ok(seen)
            } else {
                Err(format!("not the majority's term and epoch yet: {seen:?}"))
            }
        },
    );
    println!(
        "heal -> all five in term {} epoch {}: {:?}",
        healed[0].term,
        healed[0].epoch,
        healed_at.elapsed()
    );
    assert_eq!(
        healed[0].term, elected[0].term,
        "the minority adopted the majority's term: no election after the heal"
    );
    assert_eq!(
        healed[0].controller, elected[0].controller,
        "the same controller"
    );
    // Through each partition's leader now: a minority-led partition whose replica set has a
    // majority on the majority's side failed over to it during the split (docs/cluster.md).
    for (partition, leader) in healed[0].leaders.iter().enumerate() {
        let leader = cluster.index_of(leader.expect("every partition led after the heal"));
        writable(cluster, leader, partition, "healed");
    }
    wait_until("every node to show the write lease again", || {
        let seen = cluster.statuses(&everyone)?;
        if seen.iter().all(|status| status.lease == Some(true)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
}
