//! Arbitrary bytes through the pipeline loader: parse, validate the checks,
//! and plan under every profile. The loader's contract (ARCHITECTURE.md):
//! errors are located in the file and it never panics. Also: a pipeline that
//! plans, plans again to the same keys.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use e2h_engine::{EngineError, InputArity, PipelineSpec, Plan, Registry, Stage, StageContext, StageError};
use libfuzzer_sys::fuzz_target;

/// The toy kinds of the engine's tests: the bad-pipeline corpus is written against them.
#[path = "../../crates/engine/tests/common/mod.rs"]
#[allow(unused_imports)]
mod toy;

/// Stand-ins for the real kinds named in pipelines/*.yaml, so that those seeds
/// get past "unknown kind" into sweeps, profiles and keys without building the
/// science crates. They accept any mapping of params and never run.
macro_rules! stand_in {
    ($($name:ident = $kind:literal, $inputs:expr;)*) => {$(
        struct $name;
        impl Stage for $name {
            type Params = BTreeMap<String, serde_json::Value>;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "fuzz";
            const INPUTS: InputArity = $inputs;
            fn run(&self, _: Self::Params, _: &mut StageContext) -> Result<(), StageError> {
                Err("a stand-in kind never runs".into())
            }
        }
    )*};
}

stand_in! {
    McmTrajectories = "mcm.trajectories", InputArity::None;
    McmPopulation = "mcm.population", InputArity::None;
    McmRecovery = "mcm.recovery", InputArity::None;
    McmScalingFit = "mcm.scaling_fit", InputArity::AnyNonEmpty;
    CifarGaussianModel = "cifar.gaussian_model", InputArity::None;
    CifarWienerBaseline = "cifar.wiener_baseline", InputArity::Exactly(&["model"]);
    UnetTrain = "unet.train", InputArity::Exactly(&["model"]);
    UnetCrossings = "unet.crossings", InputArity::Exactly(&["train"]);
    PlotFigure = "plot.figure", InputArity::AnyNonEmpty;
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    // The execution log is written only when a stage runs; here none does.
    let mut r = toy::toy_registry(Path::new("fuzz-executions.log"), 0.0);
    r.register(McmTrajectories)
        .register(McmPopulation)
        .register(McmRecovery)
        .register(McmScalingFit)
        .register(CifarGaussianModel)
        .register(CifarWienerBaseline)
        .register(UnetTrain)
        .register(UnetCrossings)
        .register(PlotFigure);
    r
});

/// Lines as YAML counts them: libyaml also breaks lines at a lone CR, NEL, LS and PS.
fn yaml_lines(text: &str) -> usize {
    let mut breaks = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
            _ => {}
        }
    }
    breaks + 1
}

fn assert_located(e: &EngineError, text: &str) {
    let EngineError::Pipeline(l) = e else { panic!("not a located error: {e}") };
    let lines = yaml_lines(text).max(text.lines().count());
    assert!(
        l.line >= 1 && l.column >= 1 && l.line <= lines + 1 && !l.message.is_empty(),
        "bad location {}:{} in a file of {lines} lines: {}",
        l.line,
        l.column,
        l.message
    );
}

fn keys(plan: &Plan) -> Vec<(String, String)> {
    plan.stages.iter().map(|s| (s.name.clone(), s.key.clone())).collect()
}

fuzz_target!(|data: &[u8]| {
    // `PipelineSpec::load` rejects a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzzed.yaml");
    let spec = match PipelineSpec::parse(path, text.to_string()) {
        Ok(spec) => spec,
        Err(e) => return assert_located(&e, text),
    };
    if let Err(e) = e2h_engine::check::validate_checks(&spec) {
        return assert_located(&e, text);
    }
    let mut profiles: Vec<Option<&str>> = vec![None, Some("default"), Some("ci"), Some("paper")];
    profiles.extend(spec.profile_names().into_iter().map(Some));
    for profile in profiles {
        match Plan::build(&spec, &REGISTRY, profile) {
            Ok(plan) => {
                let again = Plan::build(&spec, &REGISTRY, profile).expect("planned once, plans twice");
                assert_eq!(keys(&plan), keys(&again), "keys differ between two plans of {profile:?}");
            }
            Err(e) => assert_located(&e, text),
        }
    }
});
