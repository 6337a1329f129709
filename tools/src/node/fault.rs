//! A fault-injecting layer for tests, in the control shard's datagram path (docs/cluster.md,
//! "Cutting nodes off without root"). **Test-only**: the hidden `--fault-file <path>` flag names
//! a small text file; while it lists a control address, this node drops every control
//! datagram (gossip and election) it would send to that address and every one it receives from
//! it. Both directions are dropped on each node, so listing a peer on one side is enough to cut
//! the link both ways; a test that cuts a cluster in two writes each node's file with the
//! other side's addresses.
//!
//! # Model
//! - **Format.** One control address (`ip:port`) per line; blank lines and anything after `#`
//!   are ignored. A missing file means no faults (a test heals by writing an empty file or
//!   removing it).
//! - **Re-reading.** The control loop calls [`FaultFile::refresh`] on every turn; it looks at
//!   the file's metadata (inode, size, modification time) at most every
//!   [`FAULT_FILE_CHECK_INTERVAL`], and reads it only when they changed. A test replaces the
//!   file atomically (write a temporary file, rename it over), so a reader never sees half of
//!   it, and every replacement has a new inode even within one timestamp tick.
//! - **Bad content** (unreadable, too large, a line that is not an address, too many
//!   addresses): the error is logged with the line, and the last valid rule set stays in force.
//!   Nothing here panics on what the file holds.
//! - **Cost.** A lookup in a small hash set per datagram, and one `stat` per check interval:
//!   the control shard only, never a data shard.

use coregrid_cluster::types::Time;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// How often the control loop looks at the fault file's metadata.
pub const FAULT_FILE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Largest fault file read; a larger one is refused (the last rules stay).
pub const FAULT_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Most addresses one fault file may list.
pub const FAULT_ADDRESSES_MAX: usize = 1024;

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    bytes: u64,
    modified_s: i64,
    modified_ns: i64,
}

/// The fault file and the rules it last held validly.
#[derive(Debug)]
pub struct FaultFile {
    path: PathBuf,
    next_check: Time,
    /// The version last looked at (valid or not), `None` when the file was missing.
    seen: Option<FileStamp>,
    /// Control addresses whose datagrams are dropped, both ways.
    dropped: BTreeSet<SocketAddr>,
    /// Datagrams dropped so far: (sent, received).
    dropped_count: (u64, u64),
}

impl FaultFile {
    /// A fault file at `path`, not read yet: the first [`FaultFile::refresh`] reads it.
    pub fn new(path: PathBuf) -> FaultFile {
        FaultFile {
            path,
            next_check: Time::ZERO,
            seen: None,
            dropped: BTreeSet::new(),
            dropped_count: (0, 0),
        }
    }

    /// When the control loop should call [`FaultFile::refresh`] next.
    pub fn next_check(&self) -> Time {
        self.next_check
    }

    /// Re-reads the file if the check interval passed and the file changed since last seen.
    pub fn refresh(&mut self, now: Time) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + FAULT_FILE_CHECK_INTERVAL;
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if self.seen.take().is_some() || !self.dropped.is_empty() {
                    self.replace(BTreeSet::new(), "the fault file is gone");
                }
                return;
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error,
                    "fault file: cannot look at it; the last valid rules stay");
                return;
            }
        };
        let stamp = FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            bytes: metadata.len(),
            modified_s: metadata.mtime(),
            modified_ns: metadata.mtime_nsec(),
        };
        if self.seen == Some(stamp) {
            return;
        }
        self.seen = Some(stamp);
        if stamp.bytes > FAULT_FILE_BYTES_MAX {
            tracing::error!(path = %self.path.display(), bytes = stamp.bytes,
                "fault file: larger than {FAULT_FILE_BYTES_MAX} bytes; the last valid rules stay");
            return;
        }
        let parsed = std::fs::read(&self.path)
            .map_err(|error| format!("cannot read it: {error}"))
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
            })
            .and_then(|text| parse_fault_rules(&text));
        match parsed {
            Ok(dropped) => {
                if dropped != self.dropped {
                    self.replace(dropped, "the fault file changed");
                }
            }
            Err(reason) => tracing::error!(path = %self.path.display(), %reason,
                "fault file: invalid; the last valid rules stay"),
        }
    }

    fn replace(&mut self, dropped: BTreeSet<SocketAddr>, why: &str) {
        let (sent, received) = self.dropped_count;
        tracing::info!(
            path = %self.path.display(),
            dropped = ?dropped,
            dropped_before_sent = sent,
            dropped_before_received = received,
            "fault rules replaced ({why}): control datagrams to and from these addresses are dropped"
        );
        self.dropped = dropped;
    }

    /// Whether a datagram to `to` is dropped (and counts it).
    pub fn drops_sent(&mut self, to: SocketAddr) -> bool {
        let drop = self.dropped.contains(&to);
        self.dropped_count.0 += u64::from(drop);
        drop
    }

    /// Whether a datagram from `from` is dropped (and counts it).
    pub fn drops_received(&mut self, from: SocketAddr) -> bool {
        let drop = self.dropped.contains(&from);
        self.dropped_count.1 += u64::from(drop);
        drop
    }
}

/// The addresses a fault file's text lists; `Err` names the first bad line.
pub fn parse_fault_rules(text: &str) -> Result<BTreeSet<SocketAddr>, String> {
    let mut dropped = BTreeSet::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let address: SocketAddr = content.parse().map_err(|error| {
            format!(
                "line {}: {content:?} is not a control address (ip:port): {error}",
                index + 1
            )
        })?;
        dropped.insert(address);
        if dropped.len() > FAULT_ADDRESSES_MAX {
            return Err(format!(
                "more than {FAULT_ADDRESSES_MAX} addresses (line {})",
                index + 1
            ));
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_are_addresses_one_a_line_with_comments() {
        let rules = parse_fault_rules(
            "# cut off from the majority\n127.0.0.1:7300\n\n  127.0.0.1:7310  # node 2\n[::1]:7320\n",
        )
        .unwrap();
        assert_eq!(
            rules,
            BTreeSet::from([
                address("127.0.0.1:7300"),
                address("127.0.0.1:7310"),
                address("[::1]:7320")
            ])
        );
        assert_eq!(parse_fault_rules("").unwrap(), BTreeSet::new());
        for bad in [
            "127.0.0.1",
            "node-3",
            "127.0.0.1:99999",
            "1.2.3.4:5 6.7.8.9:10",
        ] {
            let error = parse_fault_rules(&format!("127.0.0.1:1\n{bad}\n")).unwrap_err();
            assert!(error.starts_with("line 2:"), "{bad}: {error}");
        }
        let too_many: String = (0..=FAULT_ADDRESSES_MAX)
            .map(|port| format!("127.0.0.1:{}\n", port + 1))
            .collect();
        assert!(parse_fault_rules(&too_many).is_err());
    }

    #[test]
    fn a_changed_file_is_read_again_and_bad_content_keeps_the_last_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let write = |text: &str| {
            let temporary = dir.path().join("faults.tmp");
            std::fs::write(&temporary, text).unwrap();
            std::fs::rename(&temporary, &path).unwrap();
        };
        let mut faults = FaultFile::new(path.clone());
        let now = std::cell::Cell::new(Time::ZERO);
        let step = |faults: &mut FaultFile| {
            now.set(now.get() + FAULT_FILE_CHECK_INTERVAL);
            faults.refresh(now.get());
        };
        step(&mut faults);
        assert!(
            !faults.drops_sent(address("127.0.0.1:1")),
            "no file, no faults"
        );
        write("127.0.0.1:1\n");
        step(&mut faults);
        assert!(faults.drops_sent(address("127.0.0.1:1")));
        assert!(faults.drops_received(address("127.0.0.1:1")));
        assert!(!faults.drops_received(address("127.0.0.1:2")));
        write("127.0.0.1:1\nnot an address\n");
        step(&mut faults);
        assert!(
            faults.drops_sent(address("127.0.0.1:1")),
            "the last valid rules stay"
        );
        std::fs::write(&path, vec![b'#'; FAULT_FILE_BYTES_MAX as usize + 1]).unwrap();
        step(&mut faults);
        assert!(
            faults.drops_sent(address("127.0.0.1:1")),
            "too large: the last valid rules stay"
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        step(&mut faults);
        assert!(
            faults.drops_sent(address("127.0.0.1:1")),
            "not text: the last valid rules stay"
        );
        write("127.0.0.1:2\n");
        // Before the check interval passed, nothing is looked at.
        faults.refresh(now.get());
        assert!(faults.drops_sent(address("127.0.0.1:1")));
        step(&mut faults);
        assert!(!faults.drops_sent(address("127.0.0.1:1")));
        assert!(faults.drops_sent(address("127.0.0.1:2")));
        std::fs::remove_file(&path).unwrap();
        step(&mut faults);
        assert!(
            !faults.drops_sent(address("127.0.0.1:2")),
            "a removed file heals"
        );
        assert_eq!(faults.dropped_count, (6, 1));
    }
}
