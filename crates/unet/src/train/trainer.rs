//! The [`Trainer`]: one optimisation step at a time, evaluation, checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{config::*, eval::*};
use crate::adam::{Adam, clip_coefficient, global_grad_norm};
use crate::checkpoint;
use crate::ddpm::{DdpmSchedule, eps_mse};
use crate::dropout::ForwardMode;
use crate::error::TrainError;
use crate::kernels::optim::ema_update;
use crate::kernels::use_cpu_kernels;
use crate::params::ParamStore;
use crate::rng::{fill_standard_normal, fingerprint, rng_for, stream};
use crate::unet::UNet;

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
        // On the CPU the step's kernels run on rayon's workers; on a GPU they
        // would only spin.
        if self.device.is_cpu() {
            crate::workers::with_spinning_workers(|| self.step_inner())
        } else {
            self.step_inner()
        }
    }

    fn step_inner(&mut self) -> Result<StepStats, TrainError> {
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
        let grads = loss_t.backward()?;
        let grad_norm = global_grad_norm(&grads, &self.vars)?;
        // Clipping scales the gradients inside the Adam update.
        let grad_scale = match self.config.grad_clip {
            Some(max) if grad_norm.is_finite() => clip_coefficient(grad_norm, max),
            _ => None,
        };
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                quantity: "gradient norm",
                value: grad_norm,
            });
        }
        let lr = self.config.lr_at(step);
        self.adam.step_scaled(&grads, lr, grad_scale)?;
        if let Some(ema) = &self.ema {
            let d = ema.decay;
            let update = |((_, w), (_, e)): (&(String, Var), &(String, Var))| {
                if use_cpu_kernels(e.as_tensor()) {
                    ema_update(e.as_tensor(), w.as_tensor(), d)
                } else {
                    let new =
                        ((e.as_tensor().detach() * d)? + (w.as_tensor().detach() * (1.0 - d))?)?;
                    e.set(&new)
                }
            };
            if self.device.is_cpu() {
                // Tensor by tensor side by side, as Adam's update.
                self.vars.par_iter().zip(&ema.vars).try_for_each(update)?;
            } else {
                self.vars.iter().zip(&ema.vars).try_for_each(update)?;
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

    pub(super) fn check_levels(&self, t_levels: &[usize]) -> Result<(), TrainError> {
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
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out = self.adam.state()?;
        for (name, v) in &self.vars {
            out.insert(format!("model/{name}"), v.as_tensor().detach());
        }
        if let Some(ema) = &self.ema {
            for (name, v) in &ema.vars {
                out.insert(format!("ema/{name}"), v.as_tensor().detach());
            }
        }
        Ok(out)
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
        checkpoint::write_atomic(path, &self.state_tensors()?, meta)
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
