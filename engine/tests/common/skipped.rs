//! How a test that cannot run on this machine (no root, no ext4 loop mount, no nftables) says
//! so. Included with `#[path]` by the tests that may skip, in this crate and in `tools/tests`.

/// Says why test `test` did not run: on stdout (seen with `--nocapture`) and in
/// `target/tmp/skipped-tests.txt`, which `.ci/run` prints after the tests, so that a machine
/// that cannot run it is seen in CI's output rather than passing quietly.
pub fn skipped(test: &str, reason: &str) {
    println!("skipped: {reason}");
    let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(file, "{test}: {reason}");
    }
}
