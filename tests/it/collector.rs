//! The built-in collector payload (`payload/run`), checked by its own shell
//! test (`tests/collector.sh`): valid JSON under dash and busybox sh, fields
//! absent rather than wrong when their sources are missing.

use std::process::Command;

#[test]
fn the_collector_payload_passes_its_shell_tests() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/collector.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .expect("run tests/collector.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/collector.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no closing count:\n{stdout}"
    );
}
