//! Fingerprints the sources every stage kind depends on (see
//! `code_fingerprint.rs`) into `$OUT_DIR/code_fingerprints.rs`, read by `src/code.rs`.

#[path = "code_fingerprint.rs"]
mod code_fingerprint;

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let crates_dir = manifest_dir.parent().expect("the stages crate sits in crates/");
    let fp = code_fingerprint::fingerprints(crates_dir)
        .unwrap_or_else(|e| panic!("cannot fingerprint the sources under {}: {e}", crates_dir.display()));
    for path in &fp.watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let mut out = String::from("/// Code unit -> blake3 of its sources.\npub const UNITS: &[(&str, &str)] = &[\n");
    for (unit, hash) in &fp.units {
        writeln!(out, "    ({unit:?}, {hash:?}),").unwrap();
    }
    out.push_str("];\n\n/// Module of this crate -> the code units its stage kinds depend on.\npub const MODULES: &[(&str, &[&str])] = &[\n");
    for (module, units) in &fp.modules {
        let list: Vec<String> = units.iter().map(|u| format!("{u:?}")).collect();
        writeln!(out, "    ({module:?}, &[{}]),", list.join(", ")).unwrap();
    }
    out.push_str("];\n");
    let target = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("code_fingerprints.rs");
    std::fs::write(&target, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
}
