//! A full disk under `cargo xtask`: the binary runs under a file size limit
//! (RLIMIT_FSIZE, unprivileged), so its cache writes fail with EFBIG as they
//! would with ENOSPC.

#![cfg(unix)]

use std::process::Command;

use crate::util::{Run, TestRoot};

/// 8 blocks of 512 bytes (POSIX `ulimit -f` units): below every table of the tiny figure.
const FILE_SIZE_LIMIT_BLOCKS: &str = "8";

#[test]
fn a_full_disk_fails_with_a_clear_error_and_leaves_the_cache_usable() {
    let root = TestRoot::with_tiny_figure("full-disk");
    let key = root.xtask(&["figure", "9", "--profile", "ci", "--dry-run"]).success().printed_key("sim");

    // SIGXFSZ ignored (which survives exec): write() fails with EFBIG instead of killing xtask.
    let mut limited = Command::new("sh");
    limited.args(["-c", r#"trap '' XFSZ; ulimit -f "$1" && shift && exec "$@""#, "sh", FILE_SIZE_LIMIT_BLOCKS]);
    limited.arg(env!("CARGO_BIN_EXE_xtask"));
    root.configure(&mut limited, &["figure", "9", "--profile", "ci"]);
    let full = Run::of("figure 9 (file size limit)".into(), limited.output().expect("run sh"));
    full.failure()
        .stderr_has(&format!("error: stage `sim`: cannot write cache entry {key}"))
        .stderr_has("cannot write table `")
        .stderr_has("File too large");

    assert!(root.cache_listing("entries").is_empty(), "{:?}", root.cache_listing("entries"));
    assert!(root.cache_listing("tmp").is_empty(), "{:?}", root.cache_listing("tmp"));
    root.xtask(&["cache", "verify"]).success().stdout_has("0 valid, 0 corrupt");

    root.xtask(&["figure", "9", "--profile", "ci"]).success().stdout_has("ran      sim");
    root.xtask(&["cache", "verify"]).success().stdout_has("1 valid, 0 corrupt");
}
