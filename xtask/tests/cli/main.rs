//! `cargo xtask` as a user runs it: the built binary, in a fresh project root
//! per test (ripgrep style), on a figure small enough to run in a blink.

mod cache;
mod check;
mod code;
mod full_disk;
mod hostile;
mod root;
mod slurm;
mod util;
