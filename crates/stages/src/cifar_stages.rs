//! CIFAR-10 stages: the Gaussian model of the training images (mean and
//! covariance eigendecomposition) and the optimal linear denoiser's baseline.

use std::collections::HashMap;

use e2h_cifar::baseline::{baseline_table, BaselineConfig};
use e2h_cifar::ddpm::DdpmSchedule;
use e2h_cifar::loader::{load_split, Split};
use e2h_cifar::stats::{mean_and_covariance, GaussianModel};
use e2h_cifar::DIM;
use e2h_engine::{CodeFingerprints, InputArity, ParamIssue, Registry, Resources, Stage, StageContext, StageError};
use serde::{Deserialize, Serialize};

use crate::frame::FrameBuilder;

pub fn register(r: &mut Registry) {
    r.record_version("e2h-cifar", env!("CARGO_PKG_VERSION"));
    r.register(GaussianModelStage);
    r.register(WienerBaseline);
}

/// Images in CIFAR-10's training and test splits.
pub const TRAIN_IMAGES: usize = 50_000;
pub const TEST_IMAGES: usize = 10_000;

/// File of a Gaussian model entry: f64 tensors `mean` [d], `eigenvalues` [d]
/// and `eigenvectors` [d, d] (row-major, column j the j-th eigenvector).
pub const MODEL_FILE: &str = "gaussian_model.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianModelParams {
    /// Use the first `train_limit` training images (all when absent).
    #[serde(default)]
    pub train_limit: Option<usize>,
}

/// `cifar.gaussian_model`: mean and covariance (f64) of the training images in
/// [-1, 1], flattened CHW, and the covariance's eigendecomposition.
pub struct GaussianModelStage;

impl Stage for GaussianModelStage {
    type Params = GaussianModelParams;
    const KIND: &'static str = "cifar.gaussian_model";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::cifar_tables::gaussian_model()
    }
    const ABOUT: &'static str = "mean, covariance and its eigendecomposition of the CIFAR-10 training images";

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        vec![e2h_engine::ParamDoc::new("train_limit", "integer", "all 50000", "2..=50000", "first training images used")]
    }
    const VERSION: &'static str = "1";

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if p.train_limit.is_some_and(|n| !(2..=TRAIN_IMAGES).contains(&n)) {
            return Err(ParamIssue::new("train_limit", format!("train_limit must lie in 2..={TRAIN_IMAGES}")));
        }
        Ok(())
    }

    /// The training images in f64 (1.2 GB for all of them) and a parallel
    /// eigendecomposition.
    fn resources(_p: &Self::Params) -> Resources {
        Resources { cpus: Some(2), mem: Some("8G".into()), ..Resources::default() }
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let started = std::time::Instant::now();
        let train = load_split(Split::Train, p.train_limit)?;
        let loaded = started.elapsed().as_secs_f64();
        // The two steps of `GaussianModel::fit_images`, timed apart.
        let step = std::time::Instant::now();
        let (mean, covariance) = mean_and_covariance(&train.to_f64(), DIM);
        let seconds_covariance = step.elapsed().as_secs_f64();
        let step = std::time::Instant::now();
        let model = GaussianModel::from_moments(mean, covariance.as_ref(), train.n)?;
        let seconds_eigendecomposition = step.elapsed().as_secs_f64();
        ctx.record("train_images", train.n as u64);
        ctx.record("seconds_load_decode", loaded);
        ctx.record("seconds_mean_and_covariance", seconds_covariance);
        ctx.record("seconds_eigendecomposition", seconds_eigendecomposition);
        save_model(&model, &ctx.output_path(MODEL_FILE))?;
        let mut spectrum = FrameBuilder::new()
            .u64("index", (0..model.eigenvalues.len() as u64).collect())
            .f64("eigenvalue", model.eigenvalues.clone())
            .build()?;
        ctx.put_table("spectrum", &mut spectrum, &[("eigenvalue", "eigenvalues of the training covariance (pixels in [-1, 1]), decreasing, clipped at 0")])?;
        Ok(())
    }
}

fn save_model(m: &GaussianModel, path: &std::path::Path) -> Result<(), StageError> {
    use safetensors::tensor::{Dtype, TensorView};
    let d = m.mean.len();
    let bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut vectors = Vec::with_capacity(d * d);
    for i in 0..d {
        for j in 0..d {
            vectors.push(m.eigenvectors[(i, j)]);
        }
    }
    let (mean, values, vecs) = (bytes(&m.mean), bytes(&m.eigenvalues), bytes(&vectors));
    let tensors = vec![
        ("mean", TensorView::new(Dtype::F64, vec![d], &mean)?),
        ("eigenvalues", TensorView::new(Dtype::F64, vec![d], &values)?),
        ("eigenvectors", TensorView::new(Dtype::F64, vec![d, d], &vecs)?),
    ];
    let info: HashMap<String, String> = [("n_samples".to_string(), m.n_samples.to_string())].into();
    safetensors::serialize_to_file(tensors, Some(info), path)?;
    Ok(())
}

/// Reads a model written by `cifar.gaussian_model`.
pub fn load_model(path: &std::path::Path) -> Result<GaussianModel, StageError> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let f64s = |name: &str| -> Result<Vec<f64>, StageError> {
        let t = st.tensor(name)?;
        Ok(t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    };
    let (mean, eigenvalues, vecs) = (f64s("mean")?, f64s("eigenvalues")?, f64s("eigenvectors")?);
    let d = mean.len();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let n_samples = meta.metadata().as_ref().and_then(|m| m.get("n_samples")).and_then(|s| s.parse().ok()).unwrap_or(0);
    let eigenvectors = faer::Mat::from_fn(d, d, |i, j| vecs[i * d + j]);
    Ok(GaussianModel { mean, eigenvalues, eigenvectors, n_samples })
}

fn default_ts() -> Vec<usize> {
    e2h_cifar::baseline::DEFAULT_TS.to_vec()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WienerParams {
    /// Noise levels t of the DDPM schedule (1-based, at most 1000).
    #[serde(default = "default_ts")]
    pub ts: Vec<usize>,
    /// Use the first `test_limit` test images (all when absent); the surrogate
    /// gets as many samples.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

/// `cifar.wiener_baseline`: the optimal linear denoiser's epsilon-MSE,
/// analytic and on real test images and surrogate samples (same noise draws).
pub struct WienerBaseline;

impl Stage for WienerBaseline {
    type Params = WienerParams;
    const KIND: &'static str = "cifar.wiener_baseline";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::cifar_tables::wiener_baseline()
    }
    const ABOUT: &'static str = "the optimal linear (Wiener) denoiser's epsilon-MSE: analytic, on real test images and on surrogate samples";

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        vec![
            P::new("ts", "list of integers", "the baseline's default noise levels", "1..=1000, at most 1000 values", "DDPM noise levels t (1-based)"),
            P::new("test_limit", "integer", "all 10000", "1..=10000", "first test images used (and as many surrogate samples)"),
        ]
    }
    const VERSION: &'static str = "1";
    const INPUTS: InputArity = InputArity::Exactly(&["model"]);

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if let Some((i, t)) = p.ts.iter().enumerate().find(|(_, t)| **t == 0 || **t > 1000) {
            return Err(ParamIssue::new(format!("ts.{i}"), format!("noise levels are 1..=1000, got {t}")));
        }
        if p.test_limit.is_some_and(|n| !(1..=TEST_IMAGES).contains(&n)) {
            return Err(ParamIssue::new("test_limit", format!("test_limit must lie in 1..={TEST_IMAGES}")));
        }
        if p.ts.len() > 1000 {
            return Err(ParamIssue::new("ts", "at most 1000 noise levels"));
        }
        Ok(())
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = &ctx.input("model")?[0];
        let path = input.file(MODEL_FILE).ok_or("the model input has no Gaussian model file")?;
        let model = load_model(&path)?;
        let test = load_split(Split::Test, p.test_limit)?;
        let cfg = BaselineConfig { ts: p.ts.clone(), n_test: p.test_limit, seed: ctx.seed() };
        let rows = baseline_table(&model, &test, &DdpmSchedule::default(), &cfg)?;
        let mut df = FrameBuilder::new()
            .u64("t", rows.iter().map(|r| r.t as u64).collect())
            .f64("alpha_bar", rows.iter().map(|r| r.alpha_bar).collect())
            .f64("mmse_analytic", rows.iter().map(|r| r.mmse_analytic).collect())
            .f64("wiener_real", rows.iter().map(|r| r.wiener_real).collect())
            .f64("wiener_real_se", rows.iter().map(|r| r.wiener_real_se).collect())
            .f64("wiener_surrogate", rows.iter().map(|r| r.wiener_surrogate).collect())
            .f64("wiener_surrogate_se", rows.iter().map(|r| r.wiener_surrogate_se).collect())
            .build()?;
        ctx.record("test_images", test.n as u64);
        ctx.put_table(
            "baseline",
            &mut df,
            &[
                ("t", "DDPM noise level, 1-based: alpha_bar_t = prod_{s<=t} (1 - beta_s), linear beta 1e-4..0.02, T = 1000"),
                ("mmse_analytic", "per-dimension epsilon-MSE of the Wiener denoiser on the Gaussian model: mean_i abar l_i / (abar l_i + 1 - abar)"),
                ("wiener_real", "empirical per-dimension epsilon-MSE of the Wiener denoiser on the real test images"),
                ("wiener_real_se", "its standard error over images"),
                ("wiener_surrogate", "the same on surrogate samples mu + V diag(sqrt l) z, with the same noise draws"),
                ("wiener_surrogate_se", "its standard error"),
            ],
        )?;
        Ok(())
    }
}
