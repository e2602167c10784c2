//! The code fingerprints of the stage kinds: computed by `build.rs` from the
//! sources, and changed by an edit exactly for the kinds that depend on it.
//! Fingerprints are recomputed here, by the build script's own functions, on
//! temporary copies of the source trees.

#[allow(dead_code)]
#[path = "../code_fingerprint.rs"]
mod code_fingerprint;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use code_fingerprint::fingerprints;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/").to_path_buf()
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&src, &dst);
            }
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Kinds whose fingerprints contain a unit that differs between `a` and `b`.
fn kinds_touched(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<&'static str> {
    let changed: BTreeSet<&String> = a.keys().chain(b.keys()).filter(|u| a.get(*u) != b.get(*u)).collect();
    let registry = e2h_stages::registry();
    registry
        .kind_names()
        .into_iter()
        .filter(|kind| registry.code_of(kind).expect("registered").keys().any(|u| changed.contains(u)))
        .collect()
}

#[test]
fn the_built_fingerprints_are_those_of_the_sources() {
    let computed = fingerprints(&crates_dir()).unwrap();
    let built: BTreeMap<String, String> =
        e2h_stages::code::UNITS.iter().map(|(u, h)| (u.to_string(), h.to_string())).collect();
    assert_eq!(computed.units, built, "build.rs and the sources disagree: rebuild");
    for unit in ["e2h-mcm", "e2h-cifar", "e2h-unet", "e2h-plot", "e2h-stages::frame", "e2h-stages::mcm_stages"] {
        assert!(built.contains_key(unit), "no unit {unit}: {:?}", built.keys());
    }
    assert!(!built.contains_key("e2h-engine") && !built.contains_key("e2h-stages"), "{:?}", built.keys());
}

#[test]
fn every_kind_depends_on_its_module_and_the_science_crate_it_calls() {
    let registry = e2h_stages::registry();
    let expect: [(&str, &[&str], &[&str]); 9] = [
        ("mcm.trajectories", &["e2h-mcm", "e2h-stages::mcm_stages"], &["e2h-plot", "e2h-cifar", "e2h-unet"]),
        ("mcm.recovery", &["e2h-mcm", "e2h-stages::mcm_scaling"], &["e2h-plot", "e2h-cifar"]),
        ("mcm.scaling_fit", &["e2h-stages::mcm_scaling_fit"], &["e2h-plot", "e2h-cifar", "e2h-stages::mcm_scaling"]),
        ("mcm.population", &["e2h-mcm", "e2h-stages::mcm_population"], &["e2h-plot", "e2h-cifar"]),
        ("cifar.gaussian_model", &["e2h-cifar", "e2h-stages::cifar_stages"], &["e2h-mcm", "e2h-plot"]),
        ("cifar.wiener_baseline", &["e2h-cifar", "e2h-stages::cifar_stages"], &["e2h-mcm", "e2h-unet"]),
        ("unet.train", &["e2h-unet", "e2h-cifar", "e2h-stages::unet_stages"], &["e2h-mcm", "e2h-plot"]),
        ("unet.crossings", &["e2h-unet", "e2h-stages::unet_stages"], &["e2h-mcm"]),
        ("plot.figure", &["e2h-plot", "e2h-stages::plot_stage"], &["e2h-mcm", "e2h-cifar", "e2h-unet"]),
    ];
    for kind in registry.kind_names() {
        let code = registry.code_of(kind).unwrap();
        assert!(
            code.keys().any(|unit| unit.starts_with(code_fingerprint::STAGES_PREFIX)),
            "{kind} declares no code of its module (`fn code`): {:?}",
            code.keys()
        );
    }
    assert_eq!(
        registry.kind_names().into_iter().collect::<BTreeSet<_>>(),
        expect.iter().map(|(k, _, _)| *k).collect(),
        "a kind was added or removed: list it here"
    );
    for (kind, has, lacks) in expect {
        let code = registry.code_of(kind).unwrap();
        for unit in has {
            assert!(code.contains_key(*unit), "{kind} lacks {unit}: {:?}", code.keys());
        }
        for unit in lacks {
            assert!(!code.contains_key(*unit), "{kind} depends on {unit}: {:?}", code.keys());
        }
    }
}

#[test]
fn an_edit_changes_the_fingerprints_of_exactly_the_kinds_that_depend_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let crates = tmp.path().join("crates");
    for name in ["mcm", "cifar", "unet", "plot", "stages", "engine"] {
        copy_tree(&crates_dir().join(name), &crates.join(name));
    }
    let base = fingerprints(&crates).unwrap().units;
    let mcm = ["mcm.population", "mcm.recovery", "mcm.scaling_fit", "mcm.trajectories"];
    let every: Vec<&str> = e2h_stages::registry().kind_names();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        // The whitening constant of the MCM sampler.
        ("mcm/src/model.rs", mcm.to_vec()),
        ("mcm/src/extra.rs", mcm.to_vec()),
        ("mcm/Cargo.toml", mcm.to_vec()),
        ("cifar/src/stats.rs", vec!["cifar.gaussian_model", "cifar.wiener_baseline", "unet.crossings", "unet.train"]),
        ("unet/src/train.rs", vec!["unet.crossings", "unet.train"]),
        ("plot/src/render.rs", vec!["plot.figure"]),
        ("plot/fonts/DejaVuSans.ttf", vec!["plot.figure"]),
        ("stages/src/plot_stage.rs", vec!["plot.figure"]),
        ("stages/src/mcm_scaling.rs", vec!["mcm.recovery"]),
        ("stages/src/mcm_scaling_fit.rs", vec!["mcm.scaling_fit"]),
        // A helper every kind's module uses.
        ("stages/src/code.rs", every),
        ("stages/src/cifar_stages.rs", vec!["cifar.gaussian_model", "cifar.wiener_baseline", "unet.crossings", "unet.train"]),
        // Not part of what any kind computes.
        ("mcm/tests/extra.rs", vec![]),
        ("mcm/examples/extra.rs", vec![]),
        ("mcm/src/.model.rs.swp", vec![]),
        ("engine/src/cache.rs", vec![]),
        ("stages/src/lib.rs", vec![]),
    ];
    for (file, expected) in cases {
        let path = crates.join(file);
        let before = fs::read(&path).ok();
        let mut edited = before.clone().unwrap_or_default();
        edited.extend_from_slice(b"\n// an edit\n");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &edited).unwrap();
        let after = fingerprints(&crates).unwrap().units;
        assert_eq!(kinds_touched(&base, &after), expected, "editing {file}");
        match before {
            Some(bytes) => fs::write(&path, bytes).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
        assert_eq!(fingerprints(&crates).unwrap().units, base, "reverting {file}");
    }
}

#[test]
fn modules_depend_on_what_they_name_transitively() {
    let tmp = tempfile::tempdir().unwrap();
    let crates = tmp.path();
    write(
        &crates.join("alpha/Cargo.toml"),
        "[package]\nname = \"e2h-alpha\"\n\n[dependencies]\ne2h-beta.workspace = true\n\n[dev-dependencies]\ne2h-gamma.workspace = true\n",
    );
    write(&crates.join("alpha/src/lib.rs"), "pub fn f() {}\n");
    write(&crates.join("beta/Cargo.toml"), "[package]\nname = \"e2h-beta\"\n");
    write(&crates.join("beta/src/lib.rs"), "pub fn g() {}\n");
    write(&crates.join("gamma/Cargo.toml"), "[package]\nname = \"e2h-gamma\"\n");
    write(&crates.join("gamma/src/lib.rs"), "pub fn h() {}\n");
    write(&crates.join("engine/Cargo.toml"), "[package]\nname = \"e2h-engine\"\n");
    write(&crates.join("engine/src/lib.rs"), "pub trait Stage {}\n");
    write(&crates.join("stages/Cargo.toml"), "[package]\nname = \"e2h-stages\"\n");
    write(&crates.join("stages/src/lib.rs"), "mod one;\nmod two;\nmod three;\nmod four;\n");
    write(
        &crates.join("stages/src/one.rs"),
        "use crate::{\n    two::{X, Y},\n    four,\n};\nuse e2h_engine::Stage;\nfn run() { e2h_alpha::f() }\n",
    );
    write(&crates.join("stages/src/two.rs"), "pub struct X;\npub struct Y;\n");
    write(&crates.join("stages/src/three.rs"), "fn run() { e2h_gamma::h(); crate::two::X; }\n// not_e2h_beta\n");
    write(&crates.join("stages/src/four.rs"), "\n");
    let fp = fingerprints(crates).unwrap();
    let closure = |m: &str| fp.modules[m].iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(
        closure("one"),
        ["e2h-alpha", "e2h-beta", "e2h-stages::four", "e2h-stages::one", "e2h-stages::two"]
    );
    assert_eq!(closure("three"), ["e2h-gamma", "e2h-stages::three", "e2h-stages::two"]);
    assert_eq!(closure("two"), ["e2h-stages::two"]);
    assert_eq!(
        fp.units.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "e2h-alpha",
            "e2h-beta",
            "e2h-gamma",
            "e2h-stages::four",
            "e2h-stages::one",
            "e2h-stages::three",
            "e2h-stages::two"
        ]
    );
    // Watched: every manifest, the science crates' folders, the stages' sources.
    for path in ["alpha/Cargo.toml", "alpha/src", "stages/Cargo.toml", "stages/src"] {
        assert!(fp.watched.contains(&crates.join(path)), "{path} not watched: {:?}", fp.watched);
    }
}
