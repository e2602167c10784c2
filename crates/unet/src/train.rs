//! DDPM training: the [`Trainer`] (one optimisation step at a time), evaluation of
//! the epsilon-MSE with common random numbers, and the resumable [`train`] loop.
//!
//! Randomness: every draw is a function of `(seed, step)` (see [`crate::rng`]):
//! the epoch permutation of the training images (stream ORDER, index epoch), the
//! flips (FLIP, step), the noise levels (TIME, step), the noise (NOISE, step) and
//! the dropout masks (DROPOUT, step; host generator on the CPU, device generator
//! reseeded per step on CUDA). Resuming therefore needs only the weights, the
//! optimizer moments, the EMA weights and the step, and reproduces an
//! uninterrupted run bit for bit on the CPU.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::adam::{Adam, AdamConfig, clip_grad_norm, global_grad_norm};
use crate::checkpoint;
use crate::ddpm::{DdpmConfig, DdpmSchedule, eps_mse, eps_mse_per_image};
use crate::device::{Precision, precision};
use crate::dropout::ForwardMode;
use crate::error::TrainError;
use crate::params::ParamStore;
use crate::rng::{fill_standard_normal, fingerprint, rng_for, stream};
use crate::unet::{UNet, UNetConfig};

/// Everything that defines a training trajectory (not its length).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    pub model: UNetConfig,
    /// The noise schedule.
    pub diffusion: DdpmConfig,
    /// Adam(W) moments, epsilon and weight decay.
    pub adam: AdamConfig,
    /// Seed of initialisation, batch order, flips, noise levels, noise and dropout.
    pub seed: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup: lr(step) = lr min(1, step / warmup_steps) for 1-based steps
    /// (0 = no warmup).
    pub warmup_steps: u64,
    /// Global L2 norm the gradients are clipped to (None = no clipping).
    pub grad_clip: Option<f64>,
    /// Exponential moving average of the weights with this decay (None = off).
    /// When on, evaluation uses the EMA weights.
    pub ema_decay: Option<f64>,
    /// Random horizontal flips of the training images.
    pub random_flip: bool,
}

impl TrainConfig {
    /// Ho et al.'s CIFAR-10 training: the paper U-Net, T = 1000, Adam lr 2e-4,
    /// batch 128, warmup 5000, clipping at 1, EMA 0.9999, flips.
    pub fn paper(seed: u64) -> Self {
        Self {
            model: UNetConfig::paper(),
            diffusion: DdpmConfig::default(),
            adam: AdamConfig::default(),
            seed,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            grad_clip: Some(1.0),
            ema_decay: Some(0.9999),
            random_flip: true,
        }
    }

    /// A CPU-sized configuration for tests: [`UNetConfig::tiny`], batch 8, lr 2e-4,
    /// no warmup, clipping at 1, no EMA, flips.
    pub fn tiny(seed: u64) -> Self {
        Self {
            model: UNetConfig::tiny(),
            diffusion: DdpmConfig::default(),
            adam: AdamConfig::default(),
            seed,
            batch_size: 8,
            lr: 2e-4,
            warmup_steps: 0,
            grad_clip: Some(1.0),
            ema_decay: None,
            random_flip: true,
        }
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate().map_err(TrainError::Config)?;
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be positive".into()));
        }
        if self.diffusion.num_steps == 0 {
            return Err(TrainError::Config(
                "diffusion.num_steps must be positive".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(TrainError::Config(format!("bad learning rate {}", self.lr)));
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return Err(TrainError::Config(format!(
                "ema_decay {d} must be in [0, 1)"
            )));
        }
        if let Some(c) = self.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return Err(TrainError::Config(format!(
                "grad_clip {c} must be positive"
            )));
        }
        Ok(())
    }

    /// The learning rate of (1-based) step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

/// What one training step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step just taken (1-based).
    pub step: u64,
    /// Batch epsilon-MSE (per dimension) before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// Mean epsilon-MSE (per dimension) at one noise level over an image set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    /// Noise level (1-based).
    pub t: usize,
    /// Mean over images of the per-image mean squared error per dimension.
    pub mean: f64,
    /// Standard error of that mean (sample standard deviation / sqrt(n)).
    pub sem: f64,
    /// Number of images.
    pub n: usize,
}

/// Which weights an evaluation used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalWeights {
    /// The exponential moving average (when `ema_decay` is set).
    Ema,
    /// The raw optimised weights.
    Raw,
}

/// Pixels u8 in [0, 255] to f32 in [-1, 1]: v / 127.5 - 1.
pub fn u8_to_unit(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// `n` images stored as u8 NCHW (`channels x size x size` each) to an f32 tensor
/// (n, channels, size, size) in [-1, 1].
pub fn images_to_tensor(
    data: &[u8],
    channels: usize,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let d = channels * size * size;
    if d == 0 || !data.len().is_multiple_of(d) {
        candle_core::bail!(
            "{} bytes is not a whole number of {d}-byte images",
            data.len()
        )
    }
    let v: Vec<f32> = data.iter().map(|&b| u8_to_unit(b)).collect();
    Tensor::from_vec(v, (data.len() / d, channels, size, size), device)
}

/// The fixed evaluation noise of image `index` at level `t`: a function of
/// `(noise_seed, index, t)` only, so two image sets evaluated with the same seed
/// see the same noise (common random numbers), whatever the batching.
pub fn eval_noise(noise_seed: u64, index: usize, t: usize, dim: usize) -> Vec<f32> {
    let mut rng = rng_for(
        noise_seed,
        stream::EVAL,
        ((index as u64) << 20) ^ (t as u64),
    );
    let mut v = vec![0f32; dim];
    fill_standard_normal(&mut rng, &mut v);
    v
}

/// Per-image epsilon-MSE of `model` (evaluation mode, no autograd graph when the
/// model is built on detached parameters) on `images` (N, C, H, W) f32 (any
/// device; moved batch by batch to the model's) at each
/// level in `t_levels`, with the noise of [`eval_noise`]. Returns one vector of N
/// values per level.
pub fn eval_eps_mse_per_image(
    model: &UNet,
    schedule: &DdpmSchedule,
    images: &Tensor,
    t_levels: &[usize],
    noise_seed: u64,
    batch_size: usize,
) -> candle_core::Result<Vec<Vec<f64>>> {
    let (n, c, h, w) = images.dims4()?;
    let dim = c * h * w;
    let device = model.device().clone();
    let mode = ForwardMode::eval();
    let mut out = vec![Vec::with_capacity(n); t_levels.len()];
    let bs = batch_size.max(1);
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let x0 = images
            .narrow(0, start, len)?
            .to_device(&device)?
            .to_dtype(DType::F32)?
            .detach();
        for (j, &t) in t_levels.iter().enumerate() {
            let mut eps = Vec::with_capacity(len * dim);
            for i in start..start + len {
                eps.extend(eval_noise(noise_seed, i, t, dim));
            }
            let eps = Tensor::from_vec(eps, (len, c, h, w), &device)?;
            let ts = vec![t; len];
            let xt = schedule.noise(&x0, &eps, &ts)?;
            let pred = model.forward(&xt, &ts, &mode)?;
            let per = eps_mse_per_image(&pred, &eps)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            out[j].extend(per);
        }
        start += len;
    }
    Ok(out)
}

/// Mean and standard error of per-image values (f64, two-pass).
pub fn mean_sem(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// [`eval_eps_mse_per_image`] summarised per level.
pub fn eval_eps_mse(
    model: &UNet,
    schedule: &DdpmSchedule,
    images: &Tensor,
    t_levels: &[usize],
    noise_seed: u64,
    batch_size: usize,
) -> candle_core::Result<Vec<LevelStats>> {
    let per = eval_eps_mse_per_image(model, schedule, images, t_levels, noise_seed, batch_size)?;
    Ok(t_levels
        .iter()
        .zip(per)
        .map(|(&t, v)| {
            let (mean, sem) = mean_sem(&v);
            LevelStats {
                t,
                mean,
                sem,
                n: v.len(),
            }
        })
        .collect())
}

struct Ema {
    decay: f64,
    store: ParamStore,
    vars: Vec<(String, Var)>,
    model: UNet,
}

/// DDPM training state: parameters, optimizer, optional EMA, step counter.
pub struct Trainer<'d> {
    config: TrainConfig,
    device: Device,
    data: &'d [u8],
    n_images: usize,
    data_fingerprint: u64,
    schedule: DdpmSchedule,
    params: ParamStore,
    vars: Vec<(String, Var)>,
    model: UNet,
    eval_view: UNet,
    ema: Option<Ema>,
    adam: Adam,
    step: u64,
    perm_cache: Vec<(u64, Vec<u32>)>,
}

impl<'d> Trainer<'d> {
    /// A freshly initialised trainer (step 0) on `data`: u8 images, NCHW, each
    /// `model.image_channels x image_size x image_size`, concatenated.
    pub fn new(config: &TrainConfig, data: &'d [u8], device: &Device) -> Result<Self, TrainError> {
        config.validate()?;
        let dim = config.model.image_dim();
        if data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(TrainError::Config(format!(
                "training data of {} bytes is not a positive whole number of {dim}-byte images",
                data.len()
            )));
        }
        let params = ParamStore::new(config.seed, device);
        let model = UNet::new(&config.model, params.var_builder())?;
        let eval_view = UNet::new(&config.model, params.detached_var_builder())?;
        let vars = params.vars();
        let ema = match config.ema_decay {
            Some(decay) => {
                let store = params.deep_clone()?;
                let model = UNet::new(&config.model, store.detached_var_builder())?;
                let vars = store.vars();
                Some(Ema {
                    decay,
                    store,
                    vars,
                    model,
                })
            }
            None => None,
        };
        let adam = Adam::new(vars.clone(), config.adam.clone())?;
        Ok(Self {
            config: config.clone(),
            device: device.clone(),
            data,
            n_images: data.len() / dim,
            data_fingerprint: fingerprint(data),
            schedule: DdpmSchedule::new(&config.diffusion),
            params,
            vars,
            model,
            eval_view,
            ema,
            adam,
            step: 0,
            perm_cache: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Steps taken so far.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &DdpmSchedule {
        &self.schedule
    }

    /// The optimised parameters.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The EMA parameters, when EMA is on.
    pub fn ema_params(&self) -> Option<&ParamStore> {
        self.ema.as_ref().map(|e| &e.store)
    }

    /// The network on the optimised parameters (builds autograd graphs).
    pub fn model(&self) -> &UNet {
        &self.model
    }

    /// The network evaluations use: on the EMA weights when EMA is on, else on the
    /// optimised weights; either way on detached parameters (no autograd graph).
    pub fn eval_model(&self) -> &UNet {
        match &self.ema {
            Some(e) => &e.model,
            None => &self.eval_view,
        }
    }

    /// Which weights [`Trainer::eval_model`] uses: EMA when on, else raw.
    pub fn eval_weights(&self) -> EvalWeights {
        if self.ema.is_some() {
            EvalWeights::Ema
        } else {
            EvalWeights::Raw
        }
    }

    /// The evaluation network (detached parameters) on the chosen weights; asking
    /// for EMA weights without EMA is an error.
    pub fn model_for(&self, weights: EvalWeights) -> Result<&UNet, TrainError> {
        match (weights, &self.ema) {
            (EvalWeights::Raw, _) => Ok(&self.eval_view),
            (EvalWeights::Ema, Some(e)) => Ok(&e.model),
            (EvalWeights::Ema, None) => Err(TrainError::Config(
                "EMA weights requested but ema_decay is not set".into(),
            )),
        }
    }

    /// Number of scalar parameters of the network.
    pub fn param_count(&self) -> usize {
        self.model.param_count()
    }

    fn epoch_perm(&mut self, epoch: u64) -> &[u32] {
        if let Some(pos) = self.perm_cache.iter().position(|(e, _)| *e == epoch) {
            return &self.perm_cache[pos].1;
        }
        let n = self.n_images;
        let mut perm: Vec<u32> = (0..n as u32).collect();
        let mut rng = rng_for(self.config.seed, stream::ORDER, epoch);
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            perm.swap(i, j);
        }
        if self.perm_cache.len() >= 2 {
            self.perm_cache.remove(0);
        }
        self.perm_cache.push((epoch, perm));
        &self.perm_cache.last().expect("just pushed").1
    }

    /// The training-image indices of (1-based) step `step`: consecutive slices of
    /// a fresh seeded permutation per epoch.
    pub fn batch_indices(&mut self, step: u64) -> Vec<usize> {
        let b = self.config.batch_size as u64;
        let n = self.n_images as u64;
        let start = (step.max(1) - 1) * b;
        (0..b)
            .map(|k| {
                let p = start + k;
                let perm = self.epoch_perm(p / n);
                perm[(p % n) as usize] as usize
            })
            .collect()
    }

    /// The inputs of step `step`: clean images (flipped where drawn) as f32 in
    /// [-1, 1], the noise levels, and the noise.
    pub fn batch(&mut self, step: u64) -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let idx = self.batch_indices(step);
        let m = &self.config.model;
        let (c, s) = (m.image_channels, m.image_size);
        let dim = m.image_dim();
        let mut flip_rng = rng_for(self.config.seed, stream::FLIP, step);
        let mut x0 = Vec::with_capacity(idx.len() * dim);
        for &i in &idx {
            let img = &self.data[i * dim..(i + 1) * dim];
            let flip = self.config.random_flip && flip_rng.random::<bool>();
            for ch in 0..c {
                for y in 0..s {
                    let row = &img[ch * s * s + y * s..ch * s * s + (y + 1) * s];
                    if flip {
                        x0.extend(row.iter().rev().map(|&v| u8_to_unit(v)));
                    } else {
                        x0.extend(row.iter().map(|&v| u8_to_unit(v)));
                    }
                }
            }
        }
        let big_t = self.schedule.num_steps();
        let mut t_rng = rng_for(self.config.seed, stream::TIME, step);
        let t: Vec<usize> = idx.iter().map(|_| t_rng.random_range(1..=big_t)).collect();
        let mut eps = vec![0f32; idx.len() * dim];
        fill_standard_normal(
            &mut rng_for(self.config.seed, stream::NOISE, step),
            &mut eps,
        );
        (x0, t, eps)
    }

    /// Take one optimisation step. A NaN or infinite loss or gradient norm stops
    /// with [`TrainError::NonFinite`] naming the step (the parameters are then left
    /// as before the step).
    pub fn step(&mut self) -> Result<StepStats, TrainError> {
        let step = self.step + 1;
        let (x0, t, eps) = self.batch(step);
        let m = &self.config.model;
        let shape = (t.len(), m.image_channels, m.image_size, m.image_size);
        let x0 = Tensor::from_vec(x0, shape, &self.device)?;
        let eps = Tensor::from_vec(eps, shape, &self.device)?;
        let xt = self.schedule.noise(&x0, &eps, &t)?;
        let mode = ForwardMode::train(self.config.seed, step, &self.device)?;
        let pred = self.model.forward(&xt, &t, &mode)?;
        let loss_t = eps_mse(&pred, &eps)?;
        let loss = f64::from(loss_t.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                quantity: "loss",
                value: loss,
            });
        }
        let mut grads = loss_t.backward()?;
        let grad_norm = match self.config.grad_clip {
            Some(max) => {
                let n = global_grad_norm(&grads, &self.vars)?;
                if n.is_finite() {
                    clip_grad_norm(&mut grads, &self.vars, max)?
                } else {
                    n
                }
            }
            None => global_grad_norm(&grads, &self.vars)?,
        };
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                quantity: "gradient norm",
                value: grad_norm,
            });
        }
        let lr = self.config.lr_at(step);
        self.adam.step(&grads, lr)?;
        if let Some(ema) = &self.ema {
            let d = ema.decay;
            for ((_, w), (_, e)) in self.vars.iter().zip(&ema.vars) {
                let new = ((e.as_tensor().detach() * d)? + (w.as_tensor().detach() * (1.0 - d))?)?;
                e.set(&new)?;
            }
        }
        self.step = step;
        Ok(StepStats {
            step,
            loss,
            grad_norm,
            lr,
        })
    }

    /// Epsilon-MSE of [`Trainer::eval_model`] (EMA weights if EMA is on, else the
    /// optimised ones; evaluation mode: dropout off) on `images` (N, C, H, W) f32
    /// in [-1, 1] (any device), at each level of `t_levels`, with the fixed noise
    /// of `noise_seed` (see [`eval_noise`]), in batches of `batch_size`.
    pub fn eval_eps_mse(
        &self,
        images: &Tensor,
        t_levels: &[usize],
        noise_seed: u64,
        batch_size: usize,
    ) -> Result<Vec<LevelStats>, TrainError> {
        self.eval_eps_mse_with(
            self.eval_weights(),
            images,
            t_levels,
            noise_seed,
            batch_size,
        )
    }

    /// As [`Trainer::eval_eps_mse`] on explicitly chosen weights.
    pub fn eval_eps_mse_with(
        &self,
        weights: EvalWeights,
        images: &Tensor,
        t_levels: &[usize],
        noise_seed: u64,
        batch_size: usize,
    ) -> Result<Vec<LevelStats>, TrainError> {
        self.check_levels(t_levels)?;
        let model = self.model_for(weights)?;
        let images = images.to_device(&self.device)?;
        Ok(eval_eps_mse(
            model,
            &self.schedule,
            &images,
            t_levels,
            noise_seed,
            batch_size,
        )?)
    }

    fn check_levels(&self, t_levels: &[usize]) -> Result<(), TrainError> {
        let big_t = self.schedule.num_steps();
        if let Some(t) = t_levels.iter().find(|&&t| t == 0 || t > big_t) {
            return Err(TrainError::Config(format!(
                "noise level {t} outside 1..={big_t}"
            )));
        }
        Ok(())
    }

    /// All state tensors: `model/<name>`, `adam_m/<name>`, `adam_v/<name>` and,
    /// with EMA, `ema/<name>`.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = self.adam.state();
        for (name, v) in &self.vars {
            out.insert(format!("model/{name}"), v.as_tensor().detach());
        }
        if let Some(ema) = &self.ema {
            for (name, v) in &ema.vars {
                out.insert(format!("ema/{name}"), v.as_tensor().detach());
            }
        }
        out
    }

    /// Write a checkpoint of the current state to `path` (atomically). `extra`
    /// metadata entries are stored alongside the trainer's own (`format`, `step`,
    /// `config`, `data_fingerprint`).
    pub fn save_checkpoint(
        &self,
        path: &Path,
        extra: &BTreeMap<String, String>,
    ) -> Result<(), TrainError> {
        let mut meta: HashMap<String, String> =
            extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        meta.insert("format".into(), checkpoint::FORMAT.into());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("config".into(), config_json(&self.config));
        meta.insert(
            "data_fingerprint".into(),
            format!("{:016x}", self.data_fingerprint),
        );
        checkpoint::write_atomic(path, &self.state_tensors(), meta)
    }

    /// Restore the state from a checkpoint written by [`Trainer::save_checkpoint`]
    /// with the same configuration and training data; returns its metadata.
    /// Unreadable or incomplete files give [`TrainError::CorruptCheckpoint`] (the
    /// trainer is unchanged); a different configuration or data set gives
    /// [`TrainError::CheckpointMismatch`].
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<HashMap<String, String>, TrainError> {
        let ck = checkpoint::read(path, &self.device)?;
        let corrupt = |reason: String| TrainError::CorruptCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mismatch = |what: &str| TrainError::CheckpointMismatch {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let meta = ck.metadata;
        let step: u64 = meta
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("no step".into()))?;
        let cfg: TrainConfig = meta
            .get("config")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| corrupt("no readable config".into()))?;
        if cfg != self.config {
            return Err(mismatch("training configuration"));
        }
        if meta.get("data_fingerprint") != Some(&format!("{:016x}", self.data_fingerprint)) {
            return Err(mismatch("training data"));
        }
        // Check completeness and shapes before touching any state.
        let mut model_t = BTreeMap::new();
        let mut ema_t = BTreeMap::new();
        for (name, v) in &self.vars {
            for prefix in ["model", "adam_m", "adam_v"]
                .into_iter()
                .chain(self.ema.as_ref().map(|_| "ema"))
            {
                let key = format!("{prefix}/{name}");
                match ck.tensors.get(&key) {
                    Some(t) if t.shape() == v.shape() && t.dtype() == DType::F32 => {}
                    Some(t) => {
                        return Err(corrupt(format!(
                            "{key}: shape {:?} {:?}",
                            t.shape(),
                            t.dtype()
                        )));
                    }
                    None => return Err(corrupt(format!("{key} missing"))),
                }
            }
            model_t.insert(name.clone(), ck.tensors[&format!("model/{name}")].clone());
            if self.ema.is_some() {
                ema_t.insert(name.clone(), ck.tensors[&format!("ema/{name}")].clone());
            }
        }
        self.params.load(&model_t)?;
        if let Some(ema) = &self.ema {
            ema.store.load(&ema_t)?;
        }
        self.adam.load_state(&ck.tensors, step)?;
        self.step = step;
        Ok(meta)
    }
}

fn config_json(config: &TrainConfig) -> String {
    serde_json::to_string(config).expect("TrainConfig serialises")
}

/// How evaluations during training are done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Noise levels (1-based), e.g. [10, 50, 100, 250, 500, 750].
    pub t_levels: Vec<usize>,
    /// Seed of the fixed evaluation noise (shared by all sets: common random numbers).
    pub noise_seed: u64,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Which weights to evaluate; None (the default): the EMA weights when
    /// `ema_decay` is set, else the raw ones. Note that with decay 0.9999 the EMA
    /// lags the raw weights by about 10^4 steps, which hides early training.
    #[serde(default)]
    pub weights: Option<EvalWeights>,
}

impl EvalConfig {
    /// The weights evaluated for a trainer.
    pub fn weights_for(&self, trainer: &Trainer) -> EvalWeights {
        self.weights.unwrap_or_else(|| trainer.eval_weights())
    }
}

/// A named set of evaluation images, (N, C, H, W) f32 in the data scale ([-1, 1]).
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// Name in the records (e.g. `"real"`, `"gaussian"`).
    pub name: String,
    /// The images.
    pub images: Tensor,
}

/// One set's losses at one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetEval {
    /// The set's name.
    pub name: String,
    /// One entry per noise level, in the order of `EvalConfig::t_levels`.
    pub levels: Vec<LevelStats>,
}

/// The evaluation at one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Training steps taken (0 = initialisation).
    pub step: u64,
    /// Mean training batch loss over the steps since the previous evaluation
    /// (None at step 0).
    pub train_loss_mean: Option<f64>,
    /// Number of steps that mean covers.
    pub train_loss_steps: u64,
    /// Which weights were evaluated.
    pub weights: EvalWeights,
    /// Per-set losses, in the order of the eval sets.
    pub sets: Vec<SetEval>,
}

/// A training run: what to train on, for how long, what to evaluate when, and
/// where to checkpoint.
pub struct TrainRun<'a> {
    /// The trajectory.
    pub config: &'a TrainConfig,
    /// Where to compute.
    pub device: &'a Device,
    /// Training images, u8 NCHW, concatenated.
    pub data: &'a [u8],
    /// Train until this many steps have been taken.
    pub max_steps: u64,
    /// Evaluation image sets (at least two images each).
    pub eval_sets: &'a [EvalSet],
    /// Noise levels, noise seed, batch size of the evaluations.
    pub eval: &'a EvalConfig,
    /// Steps after which to evaluate (and checkpoint); 0 = before training. Steps
    /// beyond `max_steps` are ignored. See [`log_spaced_steps`].
    pub eval_steps: &'a [u64],
    /// Where checkpoints go (None: no checkpoints, no resuming).
    pub checkpoint_dir: Option<&'a Path>,
    /// How many checkpoints to keep (at least 1).
    pub keep_checkpoints: usize,
}

/// The result of [`train`].
pub struct TrainOutcome<'a> {
    /// Every evaluation of the run, including those done before a resume.
    pub history: Vec<EvalRecord>,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// Checkpoints that could not be read and were skipped, with the reason.
    pub skipped_checkpoints: Vec<(PathBuf, String)>,
    /// Precision used.
    pub precision: Precision,
    /// Which weights the evaluations used.
    pub eval_weights: EvalWeights,
    /// The trainer at the end (step = max_steps).
    pub trainer: Trainer<'a>,
}

/// Steps 0, 1, 2, 5, 10, 20, 50, 100, ... up to `max_steps`, and `max_steps` itself.
pub fn log_spaced_steps(max_steps: u64) -> Vec<u64> {
    let mut out = vec![0];
    let mut decade: u64 = 1;
    'outer: loop {
        for m in [1u64, 2, 5] {
            let Some(s) = decade.checked_mul(m) else {
                break 'outer;
            };
            if s > max_steps {
                break 'outer;
            }
            out.push(s);
        }
        match decade.checked_mul(10) {
            Some(d) => decade = d,
            None => break,
        }
    }
    if *out.last().expect("non-empty") != max_steps {
        out.push(max_steps);
    }
    out
}

/// The run's progress as stored in a checkpoint. Floats are stored as their bit
/// patterns: serde_json's default float parsing is not always correctly rounded,
/// and a resumed run must reproduce the uninterrupted one exactly.
#[derive(Serialize, Deserialize)]
struct RunState {
    history: Vec<RecordBits>,
    loss_sum_bits: u64,
    loss_count: u64,
    eval_fingerprint: String,
}

/// (t, mean bits, sem bits, n).
type LevelBits = (usize, u64, u64, usize);

#[derive(Serialize, Deserialize)]
struct RecordBits {
    step: u64,
    train_loss_mean: Option<u64>,
    train_loss_steps: u64,
    weights: EvalWeights,
    /// (name, [(t, mean bits, sem bits, n)]).
    sets: Vec<(String, Vec<LevelBits>)>,
}

impl From<&EvalRecord> for RecordBits {
    fn from(r: &EvalRecord) -> Self {
        Self {
            step: r.step,
            train_loss_mean: r.train_loss_mean.map(f64::to_bits),
            train_loss_steps: r.train_loss_steps,
            weights: r.weights,
            sets: r
                .sets
                .iter()
                .map(|s| {
                    let levels = s
                        .levels
                        .iter()
                        .map(|l| (l.t, l.mean.to_bits(), l.sem.to_bits(), l.n))
                        .collect();
                    (s.name.clone(), levels)
                })
                .collect(),
        }
    }
}

impl From<RecordBits> for EvalRecord {
    fn from(r: RecordBits) -> Self {
        Self {
            step: r.step,
            train_loss_mean: r.train_loss_mean.map(f64::from_bits),
            train_loss_steps: r.train_loss_steps,
            weights: r.weights,
            sets: r
                .sets
                .into_iter()
                .map(|(name, levels)| SetEval {
                    name,
                    levels: levels
                        .into_iter()
                        .map(|(t, m, s, n)| LevelStats {
                            t,
                            mean: f64::from_bits(m),
                            sem: f64::from_bits(s),
                            n,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn eval_fingerprint(run: &TrainRun) -> Result<String, TrainError> {
    let mut bytes = serde_json::to_vec(run.eval).expect("EvalConfig serialises");
    for set in run.eval_sets {
        bytes.extend(set.name.as_bytes());
        bytes.push(0);
        for d in set.images.dims() {
            bytes.extend((*d as u64).to_le_bytes());
        }
        let v = set
            .images
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        bytes.extend(
            fingerprint(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).to_le_bytes(),
        );
    }
    Ok(format!("{:016x}", fingerprint(&bytes)))
}

fn evaluate(trainer: &Trainer, run: &TrainRun) -> Result<Vec<SetEval>, TrainError> {
    let step = trainer.current_step();
    let mut out = Vec::with_capacity(run.eval_sets.len());
    for set in run.eval_sets {
        let levels = trainer.eval_eps_mse_with(
            run.eval.weights_for(trainer),
            &set.images,
            &run.eval.t_levels,
            run.eval.noise_seed,
            run.eval.batch_size,
        )?;
        if let Some(l) = levels.iter().find(|l| !l.mean.is_finite()) {
            return Err(TrainError::NonFinite {
                step,
                quantity: "evaluation loss",
                value: l.mean,
            });
        }
        out.push(SetEval {
            name: set.name.clone(),
            levels,
        });
    }
    Ok(out)
}

/// Train, evaluating after each step in `run.eval_steps` and checkpointing after
/// each evaluation and after the last step. If `run.checkpoint_dir` holds
/// checkpoints, resume from the newest readable one at or before `max_steps`
/// (unreadable ones are skipped; one from a different configuration, training set
/// or evaluation setup is an error). On the CPU the resumed run's losses,
/// evaluations and weights are bit-identical to an uninterrupted run's.
///
/// `on_eval` sees each new evaluation record (not those restored from a
/// checkpoint); `on_progress` sees every step.
pub fn train<'a>(
    run: &TrainRun<'a>,
    mut on_eval: impl FnMut(&EvalRecord),
    mut on_progress: impl FnMut(&StepStats),
) -> Result<TrainOutcome<'a>, TrainError> {
    let mut trainer = Trainer::new(run.config, run.data, run.device)?;
    trainer.check_levels(&run.eval.t_levels)?;
    trainer.model_for(run.eval.weights_for(&trainer))?;
    let m = &run.config.model;
    for set in run.eval_sets {
        let dims = set.images.dims();
        if dims.len() != 4
            || dims[0] < 2
            || dims[1..] != [m.image_channels, m.image_size, m.image_size]
        {
            return Err(TrainError::Config(format!(
                "eval set {:?} has shape {dims:?}; expected (N >= 2, {}, {}, {})",
                set.name, m.image_channels, m.image_size, m.image_size
            )));
        }
    }
    let eval_fp = eval_fingerprint(run)?;
    let eval_steps: BTreeSet<u64> = run
        .eval_steps
        .iter()
        .copied()
        .filter(|&s| s <= run.max_steps)
        .collect();

    let mut history: Vec<EvalRecord> = Vec::new();
    let mut loss_sum = 0.0f64;
    let mut loss_count = 0u64;
    let mut resumed_from = None;
    let mut skipped = Vec::new();

    if let Some(dir) = run.checkpoint_dir {
        for (step, path) in checkpoint::list_checkpoints(dir)?.into_iter().rev() {
            if step > run.max_steps {
                continue;
            }
            match trainer.load_checkpoint(&path) {
                Ok(meta) => {
                    let state: Option<RunState> =
                        meta.get("run").and_then(|s| serde_json::from_str(s).ok());
                    let Some(state) = state else {
                        // The trainer state was loaded but the run state is unreadable:
                        // start over from a fresh trainer and try older checkpoints.
                        skipped.push((path.clone(), "unreadable run state".to_string()));
                        trainer = Trainer::new(run.config, run.data, run.device)?;
                        continue;
                    };
                    if state.eval_fingerprint != eval_fp {
                        return Err(TrainError::CheckpointMismatch {
                            path,
                            what: "evaluation setup".into(),
                        });
                    }
                    history = state.history.into_iter().map(EvalRecord::from).collect();
                    loss_sum = f64::from_bits(state.loss_sum_bits);
                    loss_count = state.loss_count;
                    resumed_from = Some(step);
                    break;
                }
                Err(TrainError::CorruptCheckpoint { path, reason }) => {
                    skipped.push((path, reason));
                }
                Err(e) => return Err(e),
            }
        }
    }

    let save = |trainer: &Trainer,
                history: &[EvalRecord],
                loss_sum: f64,
                loss_count: u64|
     -> Result<(), TrainError> {
        let Some(dir) = run.checkpoint_dir else {
            return Ok(());
        };
        let state = RunState {
            history: history.iter().map(RecordBits::from).collect(),
            loss_sum_bits: loss_sum.to_bits(),
            loss_count,
            eval_fingerprint: eval_fp.clone(),
        };
        let mut extra = BTreeMap::new();
        extra.insert(
            "run".to_string(),
            serde_json::to_string(&state).map_err(|e| TrainError::Config(e.to_string()))?,
        );
        let step = trainer.current_step();
        trainer.save_checkpoint(&checkpoint::checkpoint_path(dir, step), &extra)?;
        checkpoint::prune(dir, step, run.keep_checkpoints)
    };

    if trainer.current_step() == 0 && resumed_from.is_none() && eval_steps.contains(&0) {
        let record = EvalRecord {
            step: 0,
            train_loss_mean: None,
            train_loss_steps: 0,
            weights: run.eval.weights_for(&trainer),
            sets: evaluate(&trainer, run)?,
        };
        on_eval(&record);
        history.push(record);
        save(&trainer, &history, loss_sum, loss_count)?;
    }

    while trainer.current_step() < run.max_steps {
        let stats = trainer.step()?;
        loss_sum += stats.loss;
        loss_count += 1;
        on_progress(&stats);
        let is_eval = eval_steps.contains(&stats.step);
        if is_eval {
            let record = EvalRecord {
                step: stats.step,
                train_loss_mean: Some(loss_sum / loss_count as f64),
                train_loss_steps: loss_count,
                weights: run.eval.weights_for(&trainer),
                sets: evaluate(&trainer, run)?,
            };
            loss_sum = 0.0;
            loss_count = 0;
            on_eval(&record);
            history.push(record);
        }
        if is_eval || stats.step == run.max_steps {
            save(&trainer, &history, loss_sum, loss_count)?;
        }
    }

    Ok(TrainOutcome {
        history,
        resumed_from,
        skipped_checkpoints: skipped,
        precision: precision(run.device),
        eval_weights: run.eval.weights_for(&trainer),
        trainer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_spaced_steps_are_1_2_5_per_decade() {
        assert_eq!(log_spaced_steps(0), vec![0]);
        assert_eq!(log_spaced_steps(1), vec![0, 1]);
        assert_eq!(
            log_spaced_steps(120),
            vec![0, 1, 2, 5, 10, 20, 50, 100, 120]
        );
        assert_eq!(
            log_spaced_steps(1000),
            vec![0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        );
    }

    #[test]
    fn warmup_is_linear() {
        let mut c = TrainConfig::tiny(0);
        c.warmup_steps = 4;
        assert_eq!(c.lr_at(1), c.lr / 4.0);
        assert_eq!(c.lr_at(4), c.lr);
        assert_eq!(c.lr_at(100), c.lr);
    }

    #[test]
    fn mean_sem_two_pass() {
        let (m, s) = mean_sem(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-15);
    }
}
