//! The code fingerprints of this crate's stage kinds, computed at build time
//! (`build.rs`, `code_fingerprint.rs`): every kind depends on its module, the
//! modules it uses and the science crates they call.

use e2h_engine::CodeFingerprints;

include!(concat!(env!("OUT_DIR"), "/code_fingerprints.rs"));

/// The fingerprints of the units the stage kinds of `module_path` (as
/// `module_path!()` gives it) depend on.
///
/// # Panics
/// If the module is not one of this crate's source files (a programming error
/// the crate's tests catch).
pub fn of_module(module_path: &str) -> CodeFingerprints {
    let module = module_path.rsplit("::").next().unwrap_or(module_path);
    let units = MODULES
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("no code fingerprint for module `{module_path}`"))
        .1;
    units
        .iter()
        .map(|unit| {
            let (_, hash) = UNITS.iter().find(|(u, _)| u == unit).expect("build.rs lists every unit it names");
            (unit.to_string(), hash.to_string())
        })
        .collect()
}
