//! U-Net stages (Figure 1): DDPM training on CIFAR-10 with evaluations on real
//! test images and Gaussian-surrogate samples under common noise draws, the
//! Wiener denoiser on the very same draws, and the crossing analysis.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use e2h_cifar::loader::{load_split, Split};
use e2h_cifar::stats::GaussianModel;
use e2h_cifar::wiener::{self, LossEstimate};
use e2h_engine::table::{column_f64, column_string};
use e2h_engine::{CodeFingerprints, Footprint, InputArity, ParamIssue, Registry, Resources, Stage, StageContext, StageError};
use e2h_unet::train::{eval_noise, images_to_tensor, log_spaced_steps, train, EvalConfig, EvalSet, TrainRun};
use e2h_unet::{AdamConfig, DdpmConfig, DdpmSchedule, EvalWeights, TrainConfig, UNetConfig};
use serde::{Deserialize, Serialize};

use crate::cifar_stages::{load_model, MODEL_FILE};
use crate::frame::FrameBuilder;

pub fn register(r: &mut Registry) {
    r.record_version("e2h-unet", env!("CARGO_PKG_VERSION"));
    r.register(UnetTrain);
    r.register(UnetCrossings);
}

/// File of the trained network in a `unet.train` entry: a resumable checkpoint
/// (weights, Adam moments, EMA weights when on; configuration in the header).
pub const CHECKPOINT_FILE: &str = "unet.safetensors";

/// CIFAR-10 images: 3 x 32 x 32.
const CHANNELS: usize = 3;
const SIZE: usize = 32;
const DIM: usize = CHANNELS * SIZE * SIZE;

fn default_device() -> String {
    "cpu".into()
}
fn default_lr() -> f64 {
    2e-4
}
fn default_grad_clip() -> Option<f64> {
    Some(1.0)
}
fn default_true() -> bool {
    true
}
fn default_eval_ts() -> Vec<usize> {
    vec![10, 50, 100, 250, 500, 750]
}
fn default_eval_batch() -> usize {
    250
}
fn default_keep_checkpoints() -> usize {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetTrainParams {
    /// `cpu`, `cuda` or `cuda:N`. Part of the cache key on purpose: CPU and GPU
    /// runs differ in the last bits, so they are different results.
    #[serde(default = "default_device")]
    pub device: String,
    /// Allow TF32 matrix multiplies on CUDA (no effect on the CPU).
    #[serde(default)]
    pub tf32: bool,
    /// The network (Ho et al.'s CIFAR-10 model: width 128, (1,2,2,2), 2 blocks,
    /// attention at 16, dropout 0.1, 32 groups).
    pub model: UNetConfig,
    #[serde(default)]
    pub diffusion: DdpmConfig,
    #[serde(default)]
    pub adam: AdamConfig,
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_grad_clip")]
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub ema_decay: Option<f64>,
    #[serde(default = "default_true")]
    pub random_flip: bool,
    /// Training steps.
    pub max_steps: u64,
    /// Train on the first `train_limit` training images (all when absent).
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Real test images evaluated (the first ones); as many surrogate samples.
    pub eval_images: usize,
    /// Noise levels (1-based) of the evaluations.
    #[serde(default = "default_eval_ts")]
    pub eval_ts: Vec<usize>,
    /// Images per evaluation forward pass.
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    /// Training steps after which to evaluate (strictly increasing, at most
    /// `max_steps`; `max_steps` itself is always evaluated). Default: 0, 1, 2,
    /// 5, 10, 20, 50, ... up to `max_steps`.
    #[serde(default)]
    pub eval_steps: Option<Vec<u64>>,
    /// `raw` or `ema` (default: EMA when `ema_decay` is set).
    #[serde(default)]
    pub eval_weights: Option<EvalWeights>,
    /// Checkpoints kept in the stage's scratch directory for resuming.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
}

impl UnetTrainParams {
    fn train_config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            model: self.model.clone(),
            diffusion: self.diffusion.clone(),
            adam: self.adam.clone(),
            seed,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            grad_clip: self.grad_clip,
            ema_decay: self.ema_decay,
            random_flip: self.random_flip,
        }
    }
}

/// A seed for one purpose derived from the stage seed, so the training, the
/// evaluation noise and the surrogate samples never share a stream.
fn derive_seed(seed: u64, purpose: u64) -> u64 {
    e2h_unet::rng::derive_seed(seed, purpose, 0)
}
const EVAL_NOISE: u64 = 1;
const SURROGATE_SAMPLES: u64 = 2;

/// `unet.train`: train a DDPM U-Net on CIFAR-10 and evaluate it at log-spaced
/// steps on real test images and Gaussian-surrogate samples; resumes from its
/// checkpoints when interrupted.
pub struct UnetTrain;

impl Stage for UnetTrain {
    type Params = UnetTrainParams;
    const KIND: &'static str = "unet.train";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::cifar_tables::unet_train()
    }
    const ABOUT: &'static str = "trains a DDPM U-Net on CIFAR-10 (resumable) and evaluates it on real and surrogate images against the Wiener line";

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        vec![
            P::new("device", "string", "cpu", "cpu, cuda, cuda:N", "where to train (part of the key)"),
            P::new("tf32", "boolean", "false", "", "TF32 matmuls on the GPU"),
            P::new("model", "mapping", "", "image_channels 3, image_size 32, base_channels <= 1024, 1-6 levels of channel_mult in 1..=16, num_res_blocks <= 16", "U-Net architecture (attn_resolutions, dropout, groups, conv_impl)"),
            P::new("diffusion", "mapping", "T = 1000, beta 1e-4..0.02", "num_steps <= 100000", "DDPM schedule"),
            P::new("adam", "mapping", "beta1 0.9, beta2 0.999", "", "Adam(W) settings"),
            P::new("batch_size", "integer", "", "1..=65536", "training batch"),
            P::new("lr", "number", "2e-4", "(0, 1]", "learning rate"),
            P::new("warmup_steps", "integer", "0", "<= 1e9", "linear warm-up"),
            P::new("grad_clip", "number", "1.0", "> 0", "gradient-norm clip"),
            P::new("ema_decay", "number", "none", "[0, 1)", "EMA of the weights"),
            P::new("random_flip", "boolean", "true", "", "horizontal flips"),
            P::new("max_steps", "integer", "", "1..=1e9", "training steps"),
            P::new("train_limit", "integer", "all 50000", "<= 50000", "first training images used"),
            P::new("eval_images", "integer", "", "2..=10000", "real test images (and as many surrogate samples) per evaluation"),
            P::new("eval_ts", "list of integers", "[10, 50, 100, 250, 500, 750]", "1..=num_steps, at most 1000", "noise levels evaluated"),
            P::new("eval_batch", "integer", "250", "1..=65536", "evaluation batch"),
            P::new("eval_steps", "list of integers", "0, 1, 2, 5, 10, 20, 50, ... (1-2-5 per decade)", "strictly increasing, <= max_steps, at most 10000", "training steps after which to evaluate (max_steps always is)"),
            P::new("eval_weights", "ema | raw", "ema when ema_decay is set", "", "weights evaluated"),
            P::new("keep_checkpoints", "integer", "2", "1..=100", "checkpoints kept for resuming"),
        ]
    }
    // 2: evaluation noise and surrogate seeds derived with the U-Net crate's derive_seed.
    // 3: CPU kernels (im2col + GEMM convolutions, fused GroupNorm): the same
    //    network, with sums in another order, so the losses differ in rounding.
    const VERSION: &'static str = "3";
    const INPUTS: InputArity = InputArity::Exactly(&["model"]);

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        let device = p.device.trim();
        if !(device == "cpu" || device == "cuda" || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())) {
            return Err(ParamIssue::new("device", format!("expected cpu, cuda or cuda:N, got {:?}", p.device)));
        }
        if p.model.image_channels != CHANNELS || p.model.image_size != SIZE {
            return Err(ParamIssue::new("model", "CIFAR-10 images are 3 x 32 x 32: set image_channels 3 and image_size 32"));
        }
        // Bounds first: the model's own checks shift by the level count.
        if !(1..=6).contains(&p.model.channel_mult.len()) {
            return Err(ParamIssue::new("model.channel_mult", "between 1 and 6 levels (32 x 32 images)"));
        }
        if let Some((i, m)) = p.model.channel_mult.iter().enumerate().find(|(_, m)| !(1..=16).contains(*m)) {
            return Err(ParamIssue::new(format!("model.channel_mult.{i}"), format!("multipliers lie in 1..=16, got {m}")));
        }
        for (field, n, max) in [
            ("model.base_channels", p.model.base_channels, 1024),
            ("model.num_res_blocks", p.model.num_res_blocks, 16),
            ("model.groups", p.model.groups, 1024),
            ("diffusion.num_steps", p.diffusion.num_steps, 100_000),
            ("batch_size", p.batch_size, 65_536),
            ("eval_images", p.eval_images, crate::cifar_stages::TEST_IMAGES),
            ("eval_batch", p.eval_batch, 65_536),
            ("eval_ts", p.eval_ts.len(), 1000),
            ("keep_checkpoints", p.keep_checkpoints, 100),
            ("train_limit", p.train_limit.unwrap_or(1), crate::cifar_stages::TRAIN_IMAGES),
        ] {
            if n > max {
                return Err(ParamIssue::new(field, format!("{field} must be at most {max}, got {n}")));
            }
        }
        if p.max_steps > 1_000_000_000 || p.warmup_steps > 1_000_000_000 {
            return Err(ParamIssue::new("max_steps", "max_steps and warmup_steps must be at most 10^9"));
        }
        if !(p.lr > 0.0 && p.lr <= 1.0) {
            return Err(ParamIssue::new("lr", format!("lr must lie in (0, 1], got {}", p.lr)));
        }
        p.model.validate().map_err(|m| ParamIssue::new("model", m))?;
        if p.batch_size == 0 {
            return Err(ParamIssue::new("batch_size", "must be positive"));
        }
        if p.max_steps == 0 {
            return Err(ParamIssue::new("max_steps", "must be positive"));
        }
        if p.train_limit.is_some_and(|n| n < p.batch_size.min(2)) {
            return Err(ParamIssue::new("train_limit", "too few training images"));
        }
        if p.eval_images < 2 {
            return Err(ParamIssue::new("eval_images", "at least two images are needed for a standard error"));
        }
        if p.eval_ts.is_empty() {
            return Err(ParamIssue::new("eval_ts", "at least one noise level"));
        }
        if let Some((i, t)) = p.eval_ts.iter().enumerate().find(|(_, t)| **t == 0 || **t > p.diffusion.num_steps) {
            return Err(ParamIssue::new(format!("eval_ts.{i}"), format!("noise levels are 1..={}, got {t}", p.diffusion.num_steps)));
        }
        if let Some(steps) = &p.eval_steps {
            if steps.len() > 10_000 {
                return Err(ParamIssue::new("eval_steps", format!("at most 10000 evaluations, got {}", steps.len())));
            }
            if let Some(i) = (1..steps.len()).find(|&i| steps[i] <= steps[i - 1]) {
                return Err(ParamIssue::new(format!("eval_steps.{i}"), format!("steps must be strictly increasing: {} follows {}", steps[i], steps[i - 1])));
            }
            if let Some((i, s)) = steps.iter().enumerate().find(|(_, s)| **s > p.max_steps) {
                return Err(ParamIssue::new(format!("eval_steps.{i}"), format!("step {s} is beyond max_steps = {}", p.max_steps)));
            }
        }
        if p.eval_batch == 0 {
            return Err(ParamIssue::new("eval_batch", "must be positive"));
        }
        if p.keep_checkpoints == 0 {
            return Err(ParamIssue::new("keep_checkpoints", "keep at least one checkpoint (resuming needs it)"));
        }
        p.train_config(0).validate().map_err(|e| ParamIssue::new("", e.to_string()))
    }

    /// A GPU when training on one; a few cores for data loading and evaluation.
    fn resources(p: &Self::Params) -> Resources {
        let gpu = p.device.trim().starts_with("cuda");
        Resources { cpus: Some(if gpu { 4 } else { 2 }), mem: Some("16G".into()), gpus: gpu.then_some(1), ..Resources::default() }
    }

    fn footprint(p: &Self::Params) -> Footprint {
        // Host memory: the images as f32 and a copy of the weights; on a CPU
        // also their gradients and Adam moments (~35.7M parameters at width 128,
        // growing with its square) and the activations: about 40 maps per image
        // kept for the backward pass, 8 live ones per image when evaluating.
        let width = p.model.base_channels as f64;
        let parameters = 35.7e6 * (width / 128.0).powi(2);
        let images = (p.train_limit.unwrap_or(crate::cifar_stages::TRAIN_IMAGES) + 2 * p.eval_images) as f64;
        let map = (SIZE * SIZE) as f64 * width * 4.0;
        let activations = (p.batch_size as f64 * map * 40.0).max(p.eval_batch as f64 * map * 8.0);
        let on_cpu = p.device.trim() == "cpu";
        let bytes = images * DIM as f64 * 4.0 + if on_cpu { parameters * 16.0 + activations } else { parameters * 4.0 };
        Footprint::new(
            bytes,
            format!(
                "images x 12 KiB + parameters x 16 B + activations (batch_size x 40 or eval_batch x 8 maps of 32 x 32 x \
                 base_channels x 4 B) on a CPU; on a GPU only the images and a copy of the weights are in host memory; \
                 base_channels = {}, batch_size = {}, eval_batch = {}, device = {}",
                p.model.base_channels, p.batch_size, p.eval_batch, p.device
            ),
        )
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let started = Instant::now();
        // First, so a CPU-only build fails before any loading.
        let device = e2h_unet::select_device(&p.device).map_err(|e| {
            // The message, without the backtrace candle attaches when RUST_BACKTRACE is set.
            let e = match e {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                e => e,
            };
            if cfg!(feature = "cuda") {
                format!("{e} (is a GPU visible to this process?)")
            } else {
                format!("{e}; build the GPU binary with `cargo build --release -p xtask --features cuda` (README), or use a CPU profile such as `--profile ci`")
            }
        })?;
        let model_file = ctx.input("model")?[0].file(MODEL_FILE).ok_or("the model input has no Gaussian model file")?;
        let gaussian = load_model(&model_file)?;
        if gaussian.dim() != DIM {
            return Err(format!("the Gaussian model has dimension {}, CIFAR-10 images {DIM}", gaussian.dim()).into());
        }
        let train_images = load_split(Split::Train, p.train_limit)?;
        let test = load_split(Split::Test, Some(p.eval_images))?;
        if test.n < p.eval_images {
            return Err(format!("eval_images = {} but only {} test images are available", p.eval_images, test.n).into());
        }
        if device.is_cuda() {
            e2h_unet::set_tf32(p.tf32);
        }
        let seed = ctx.seed();
        let config = p.train_config(seed);
        let noise_seed = derive_seed(seed, EVAL_NOISE);

        // The two evaluation sets, kept on the host (moved batch by batch).
        let real_f64 = test.to_f64();
        let gauss_f32 = e2h_cifar::surrogate::sample_f32(&gaussian, p.eval_images, derive_seed(seed, SURROGATE_SAMPLES));
        let gauss_f64: Vec<f64> = gauss_f32.iter().map(|&x| f64::from(x)).collect();
        let eval_sets = [
            EvalSet { name: "real".into(), images: images_to_tensor(&test.pixels, CHANNELS, SIZE, &Device::Cpu)? },
            EvalSet { name: "gaussian".into(), images: Tensor::from_vec(gauss_f32, (p.eval_images, CHANNELS, SIZE, SIZE), &Device::Cpu)? },
        ];

        // The Wiener denoiser on the same images with the same noise draws.
        let schedule = DdpmSchedule::new(&p.diffusion);
        let wiener_started = Instant::now();
        let wiener_real = wiener_losses(&gaussian, &schedule, &real_f64, &p.eval_ts, noise_seed)?;
        let wiener_gauss = wiener_losses(&gaussian, &schedule, &gauss_f64, &p.eval_ts, noise_seed)?;
        ctx.record("seconds_wiener", wiener_started.elapsed().as_secs_f64());

        let eval = EvalConfig { t_levels: p.eval_ts.clone(), noise_seed, batch_size: p.eval_batch, weights: p.eval_weights };
        let eval_steps = match &p.eval_steps {
            Some(steps) => {
                let mut steps = steps.clone();
                if steps.last() != Some(&p.max_steps) {
                    steps.push(p.max_steps);
                }
                steps
            }
            None => log_spaced_steps(p.max_steps),
        };
        let checkpoint_dir = ctx.scratch_dir()?.to_path_buf();
        let run = TrainRun {
            config: &config,
            device: &device,
            data: &train_images.pixels,
            max_steps: p.max_steps,
            eval_sets: &eval_sets,
            eval: &eval,
            eval_steps: &eval_steps,
            checkpoint_dir: Some(&checkpoint_dir),
            keep_checkpoints: p.keep_checkpoints,
        };
        let progress = ctx.progress(p.max_steps, "training steps");
        let train_started = Instant::now();
        let outcome = train(
            &run,
            |record| {
                let summary: Vec<String> = record
                    .sets
                    .iter()
                    .map(|s| format!("{} {:.4}", s.name, s.levels.first().map_or(f64::NAN, |l| l.mean)))
                    .collect();
                tracing::debug!(step = record.step, "eval at t = {}: {}", p.eval_ts[0], summary.join(", "));
            },
            |_| progress.inc(1),
        )?;
        progress.finish();
        let train_seconds = train_started.elapsed().as_secs_f64();
        for (path, reason) in &outcome.skipped_checkpoints {
            tracing::warn!("skipped unreadable checkpoint {}: {reason}", path.display());
        }
        if let Some(step) = outcome.resumed_from {
            tracing::info!("resumed from the checkpoint of step {step}");
        }

        // Long table: one row per (step, set, denoiser, t). The Wiener rows repeat
        // at every step so a figure can draw them as a line over the same axis.
        let mut rows = LossRows::default();
        for record in &outcome.history {
            for set in &record.sets {
                for level in &set.levels {
                    rows.push(record.step, &set.name, "unet", level.t, level.mean, level.sem, level.n);
                }
            }
            for (set, losses) in [("real", &wiener_real), ("gaussian", &wiener_gauss)] {
                for (&t, l) in p.eval_ts.iter().zip(losses.iter()) {
                    rows.push(record.step, set, "wiener", t, l.mean, l.se, l.n);
                }
            }
        }
        let mut losses = rows.frame()?;
        ctx.put_table(
            "losses",
            &mut losses,
            &[
                ("step", "training steps taken when evaluated (0 = initialisation)"),
                ("set", "real: the first eval_images CIFAR-10 test images; gaussian: as many samples of the Gaussian surrogate (training mean and covariance)"),
                ("denoiser", "unet: the trained network; wiener: the optimal linear denoiser of the Gaussian model (constant in step)"),
                ("t", "DDPM noise level, 1-based"),
                ("loss", "per-dimension epsilon-MSE, mean over images; the same noise draws for both sets and both denoisers"),
                ("se", "standard error of the mean over images"),
                ("loss_lo", "loss - se"),
                ("loss_hi", "loss + se"),
            ],
        )?;

        let history = &outcome.history;
        let mut training = FrameBuilder::new()
            .u64("step", history.iter().map(|r| r.step).collect())
            .f64("train_loss_mean", history.iter().map(|r| r.train_loss_mean.unwrap_or(f64::NAN)).collect())
            .u64("train_loss_steps", history.iter().map(|r| r.train_loss_steps).collect())
            .build()?;
        ctx.put_table(
            "training",
            &mut training,
            &[("train_loss_mean", "mean training batch loss over the steps since the previous evaluation (NaN at step 0)")],
        )?;

        let alpha_bars: Vec<f64> = p.eval_ts.iter().map(|&t| schedule.alpha_bar(t)).collect();
        let mut wiener_table = FrameBuilder::new()
            .u64("t", p.eval_ts.iter().map(|&t| t as u64).collect())
            .f64("alpha_bar", alpha_bars.clone())
            .f64("mmse_analytic", alpha_bars.iter().map(|&a| wiener::mmse_eps(&gaussian.eigenvalues, a)).collect())
            .f64("wiener_real", wiener_real.iter().map(|l| l.mean).collect())
            .f64("wiener_real_se", wiener_real.iter().map(|l| l.se).collect())
            .f64("wiener_gaussian", wiener_gauss.iter().map(|l| l.mean).collect())
            .f64("wiener_gaussian_se", wiener_gauss.iter().map(|l| l.se).collect())
            .build()?;
        ctx.put_table(
            "wiener",
            &mut wiener_table,
            &[("mmse_analytic", "the Wiener denoiser's expected loss on the Gaussian model (what wiener_gaussian estimates)")],
        )?;

        outcome.trainer.save_checkpoint(&ctx.output_path(CHECKPOINT_FILE), &BTreeMap::new())?;
        ctx.record("parameters", outcome.trainer.param_count() as u64);
        ctx.record("device", outcome.precision.device.clone());
        ctx.record("precision", outcome.precision.label());
        ctx.record("eval_weights", format!("{:?}", outcome.eval_weights).to_lowercase());
        ctx.record("train_images", train_images.n as u64);
        ctx.record("resumed_from_step", outcome.resumed_from);
        ctx.record("seconds_training_and_evaluation", train_seconds);
        ctx.record("seconds_total", started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// The Wiener denoiser's epsilon-MSE on the images `x0` (n x 3072, [-1, 1]) at
/// each level, with the U-Net evaluation's noise draws ([`eval_noise`]).
fn wiener_losses(
    model: &GaussianModel,
    schedule: &DdpmSchedule,
    x0: &[f64],
    ts: &[usize],
    noise_seed: u64,
) -> Result<Vec<LossEstimate>, StageError> {
    let n = x0.len() / DIM;
    let signal = wiener::project(model, x0, Some(&model.mean))?;
    let mut out = Vec::with_capacity(ts.len());
    for &t in ts {
        let eps: Vec<f64> = (0..n).flat_map(|i| eval_noise(noise_seed, i, t, DIM)).map(f64::from).collect();
        let noise = wiener::project(model, &eps, None)?;
        out.push(wiener::eps_mse_projected(&model.eigenvalues, schedule.alpha_bar(t), signal.as_ref(), noise.as_ref())?);
    }
    Ok(out)
}

#[derive(Default)]
struct LossRows {
    step: Vec<u64>,
    set: Vec<String>,
    denoiser: Vec<String>,
    t: Vec<u64>,
    loss: Vec<f64>,
    se: Vec<f64>,
    n: Vec<u64>,
}

impl LossRows {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, step: u64, set: &str, denoiser: &str, t: usize, loss: f64, se: f64, n: usize) {
        self.step.push(step);
        self.set.push(set.into());
        self.denoiser.push(denoiser.into());
        self.t.push(t as u64);
        self.loss.push(loss);
        self.se.push(se);
        self.n.push(n as u64);
    }

    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        let lo = self.loss.iter().zip(&self.se).map(|(l, s)| l - s).collect();
        let hi = self.loss.iter().zip(&self.se).map(|(l, s)| l + s).collect();
        FrameBuilder::new()
            .u64("step", self.step)
            .str("set", self.set)
            .str("denoiser", self.denoiser)
            .u64("t", self.t)
            .f64("loss", self.loss)
            .f64("se", self.se)
            .f64("loss_lo", lo)
            .f64("loss_hi", hi)
            .u64("n", self.n)
            .build()
    }
}

fn default_early_steps() -> u64 {
    100
}
fn default_z() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossingParams {
    /// Evaluations at steps <= this count as "early" for the agreement of the
    /// real and surrogate losses.
    #[serde(default = "default_early_steps")]
    pub early_steps: u64,
    /// A loss is below a line when it is below by more than `z` standard errors.
    #[serde(default = "default_z")]
    pub z: f64,
}

/// `unet.crossings`: per noise level, the first step at which the U-Net's loss on
/// real images falls below the Wiener line by more than the standard error, and
/// how far the real and surrogate losses are apart early on.
pub struct UnetCrossings;

/// One (loss, standard error) pair.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    loss: f64,
    se: f64,
}

impl Estimate {
    /// (self - other) in units of the combined standard error. The draws are
    /// shared, so the differences are positively correlated and this is
    /// conservative. 0 when the two are identical (e.g. both at initialisation).
    fn z_above(self, other: Estimate) -> f64 {
        let diff = self.loss - other.loss;
        if diff == 0.0 {
            return 0.0;
        }
        diff / self.se.hypot(other.se)
    }
}

impl Stage for UnetCrossings {
    type Params = CrossingParams;
    const KIND: &'static str = "unet.crossings";

    fn tables() -> Vec<e2h_engine::TableDoc> {
        crate::cifar_tables::unet_crossings()
    }
    const ABOUT: &'static str = "per noise level, the first step at which the U-Net's real-image loss falls below the Wiener line";

    fn param_docs() -> Vec<e2h_engine::ParamDoc> {
        use e2h_engine::ParamDoc as P;
        vec![
            P::new("early_steps", "integer", "100", "", "evaluations up to this step count as early"),
            P::new("z", "number", "1.0", ">= 0", "standard errors by which a loss must be below a line"),
        ]
    }
    const VERSION: &'static str = "1";
    const INPUTS: InputArity = InputArity::Exactly(&["train"]);

    fn code(&self) -> CodeFingerprints {
        crate::code::of_module(module_path!())
    }

    fn validate(p: &Self::Params) -> Result<(), ParamIssue> {
        if !(p.z.is_finite() && p.z >= 0.0) {
            return Err(ParamIssue::new("z", "must be a non-negative number"));
        }
        Ok(())
    }

    fn run(&self, p: Self::Params, ctx: &mut StageContext) -> Result<(), StageError> {
        let df = ctx.input_table("train", "losses")?;
        let steps = column_f64(&df, "step")?;
        let ts = column_f64(&df, "t")?;
        let loss = column_f64(&df, "loss")?;
        let se = column_f64(&df, "se")?;
        let sets = column_string(&df, "set")?;
        let denoisers = column_string(&df, "denoiser")?;

        // (denoiser, set, t) -> step -> estimate.
        let mut series: Series = BTreeMap::new();
        for i in 0..df.height() {
            series
                .entry((denoisers[i].clone(), sets[i].clone(), ts[i] as u64))
                .or_default()
                .insert(steps[i] as u64, Estimate { loss: loss[i], se: se[i] });
        }
        let out = analyse(&series, p.early_steps, p.z)?;
        for i in 0..out.t.len() {
            tracing::info!(
                "t = {:>4}: Wiener (real) {:.4} ± {:.4}; real loss falls below it at step {}; at step {}: real {:.4}, surrogate {:.4}",
                out.t[i],
                out.wiener_real[i],
                out.wiener_real_se[i],
                out.crossing_step[i].map_or("- (not within the run)".to_string(), |s| s.to_string()),
                out.final_step[i],
                out.final_real[i],
                out.final_gaussian[i],
            );
        }
        let mut frame = out.frame()?;
        ctx.put_table(
            "crossings",
            &mut frame,
            &[
                ("crossing_step", "first evaluated step at which the real-image loss is below the real-image Wiener loss by more than z combined standard errors (null: never within the run)"),
                ("early_max_abs_z", "max over steps <= early_steps of |loss_real - loss_gaussian| in combined standard errors"),
                ("real_max_below_wiener_z", "max over steps of (Wiener - loss_real) on real images, in combined standard errors"),
                ("gaussian_max_below_wiener_z", "max over steps of (Wiener - loss_gaussian) on the surrogate, in combined standard errors"),
            ],
        )?;
        Ok(())
    }
}

/// Loss estimates keyed by (denoiser, set, t), then by step.
type Series = BTreeMap<(String, String, u64), BTreeMap<u64, Estimate>>;

/// The crossing analysis of [`UnetCrossings`] on the long losses table.
fn analyse(series: &Series, early_steps: u64, z: f64) -> Result<CrossingRows, StageError> {
    let get = |denoiser: &str, set: &str, t: u64| -> Result<&BTreeMap<u64, Estimate>, StageError> {
        series
            .get(&(denoiser.to_string(), set.to_string(), t))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the losses table has no rows for denoiser {denoiser}, set {set}, t = {t}").into())
    };
    let mut levels: Vec<u64> = series.keys().map(|k| k.2).collect();
    levels.sort_unstable();
    levels.dedup();

    let mut out = CrossingRows::default();
    for &t in &levels {
        let (real, gauss) = (get("unet", "real", t)?, get("unet", "gaussian", t)?);
        let wiener_real = *get("wiener", "real", t)?.values().next().expect("non-empty");
        let wiener_gauss = *get("wiener", "gaussian", t)?.values().next().expect("non-empty");
        let crossing = real.iter().find(|(_, e)| wiener_real.z_above(**e) > z).map(|(s, e)| (*s, *e));
        let early_max_abs_z = real
            .iter()
            .filter(|(s, _)| **s <= early_steps)
            .filter_map(|(s, r)| gauss.get(s).map(|g| r.z_above(*g).abs()))
            .fold(0.0, f64::max);
        let max_below = |series: &BTreeMap<u64, Estimate>, line: Estimate| {
            series.values().map(|e| line.z_above(*e)).fold(f64::NEG_INFINITY, f64::max)
        };
        let (&final_step, final_real) = real.iter().next_back().expect("non-empty");
        let final_gauss = gauss.get(&final_step).ok_or("the surrogate series misses the last step")?;
        out.t.push(t);
        out.wiener_real.push(wiener_real.loss);
        out.wiener_real_se.push(wiener_real.se);
        out.wiener_gaussian.push(wiener_gauss.loss);
        out.crossing_step.push(crossing.map(|c| c.0));
        out.real_at_crossing.push(crossing.map_or(f64::NAN, |c| c.1.loss));
        out.final_step.push(final_step);
        out.final_real.push(final_real.loss);
        out.final_gaussian.push(final_gauss.loss);
        out.early_max_abs_z.push(early_max_abs_z);
        out.real_max_below_wiener_z.push(max_below(real, wiener_real));
        out.gaussian_max_below_wiener_z.push(max_below(gauss, wiener_gauss));
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct CrossingRows {
    t: Vec<u64>,
    wiener_real: Vec<f64>,
    wiener_real_se: Vec<f64>,
    wiener_gaussian: Vec<f64>,
    crossing_step: Vec<Option<u64>>,
    real_at_crossing: Vec<f64>,
    final_step: Vec<u64>,
    final_real: Vec<f64>,
    final_gaussian: Vec<f64>,
    early_max_abs_z: Vec<f64>,
    real_max_below_wiener_z: Vec<f64>,
    gaussian_max_below_wiener_z: Vec<f64>,
}

impl CrossingRows {
    fn frame(self) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
        FrameBuilder::new()
            .u64("t", self.t)
            .f64("wiener_real", self.wiener_real)
            .f64("wiener_real_se", self.wiener_real_se)
            .f64("wiener_gaussian", self.wiener_gaussian)
            .opt_u64("crossing_step", self.crossing_step)
            .f64("real_at_crossing", self.real_at_crossing)
            .u64("final_step", self.final_step)
            .f64("final_real", self.final_real)
            .f64("final_gaussian", self.final_gaussian)
            .f64("early_max_abs_z", self.early_max_abs_z)
            .f64("real_max_below_wiener_z", self.real_max_below_wiener_z)
            .f64("gaussian_max_below_wiener_z", self.gaussian_max_below_wiener_z)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_ddpm_schedules_agree() {
        // The U-Net crate (candle) and the CIFAR crate (f64 statistics) each carry
        // the DDPM schedule; Figure 1 compares losses computed with both.
        let unet = DdpmSchedule::new(&DdpmConfig::default());
        let cifar = e2h_cifar::ddpm::DdpmSchedule::default();
        assert_eq!(unet.num_steps(), cifar.num_steps());
        for t in 1..=unet.num_steps() {
            let (a, b) = (unet.alpha_bar(t), cifar.alpha_bar(t));
            assert!((a - b).abs() <= 1e-15 * b.max(1e-300), "t = {t}: {a} vs {b}");
        }
    }

    #[test]
    fn derived_seeds_differ_by_purpose_and_seed() {
        assert_ne!(derive_seed(0, EVAL_NOISE), derive_seed(0, SURROGATE_SAMPLES));
        assert_ne!(derive_seed(0, EVAL_NOISE), derive_seed(1, EVAL_NOISE));
        assert_eq!(derive_seed(7, EVAL_NOISE), derive_seed(7, EVAL_NOISE));
    }

    fn series_with(real: &[(u64, f64)], gauss: &[(u64, f64)], wiener: f64) -> Series {
        let mut s = Series::new();
        let e = |loss| Estimate { loss, se: 0.01 };
        for (set, points) in [("real", real), ("gaussian", gauss)] {
            s.insert(("unet".into(), set.into(), 10), points.iter().map(|&(st, l)| (st, e(l))).collect());
            s.insert(("wiener".into(), set.into(), 10), points.iter().map(|&(st, _)| (st, e(wiener))).collect());
        }
        s
    }

    #[test]
    fn crossing_is_the_first_step_clearly_below_the_wiener_line() {
        // Combined standard error 0.01 * sqrt(2) = 0.0141: 0.49 is not clearly below
        // 0.50, 0.48 is.
        let real = [(0, 1.0), (10, 0.6), (100, 0.49), (200, 0.48), (500, 0.45)];
        let gauss = [(0, 1.0), (10, 0.61), (100, 0.52), (200, 0.51), (500, 0.505)];
        let out = analyse(&series_with(&real, &gauss, 0.50), 100, 1.0).unwrap();
        assert_eq!(out.crossing_step, vec![Some(200)]);
        assert_eq!(out.real_at_crossing, vec![0.48]);
        assert_eq!(out.final_step, vec![500]);
        // Early (<= 100): the largest gap is 0.03 at step 100.
        assert!((out.early_max_abs_z[0] - 0.03 / 0.01f64.hypot(0.01)).abs() < 1e-9);
        // The surrogate never goes below its line.
        assert!(out.gaussian_max_below_wiener_z[0] < 0.0);
        assert!((out.real_max_below_wiener_z[0] - 0.05 / 0.01f64.hypot(0.01)).abs() < 1e-9);
    }

    #[test]
    fn no_crossing_is_null_and_missing_series_is_an_error() {
        let real = [(0, 1.0), (10, 0.6)];
        let out = analyse(&series_with(&real, &real, 0.5), 100, 1.0).unwrap();
        assert_eq!(out.crossing_step, vec![None]);
        assert!(out.real_at_crossing[0].is_nan());
        let mut s = series_with(&real, &real, 0.5);
        s.remove(&("unet".to_string(), "gaussian".to_string(), 10));
        let err = analyse(&s, 100, 1.0).unwrap_err().to_string();
        assert!(err.contains("set gaussian"), "{err}");
    }

    #[test]
    fn z_above_is_zero_for_identical_estimates_and_signed_otherwise() {
        let a = Estimate { loss: 1.0, se: 0.03 };
        assert_eq!(a.z_above(a), 0.0);
        let b = Estimate { loss: 0.9, se: 0.04 };
        assert!((a.z_above(b) - 2.0).abs() < 1e-12);
        assert!((b.z_above(a) + 2.0).abs() < 1e-12);
    }
}
