//! A named, ordered parameter store with seeded, order-independent initialisation.
//!
//! candle-nn's `VarMap` initialises with the device RNG (unseedable on the CPU)
//! and iterates a `HashMap`; here every parameter is initialised from
//! `(seed, name)` alone and iteration is in name order, so two stores built from
//! the same seed are bit-identical and reductions over all parameters (gradient
//! norm) are summed in a fixed order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::Rng;

use crate::rng::{fill_standard_normal, name_hash, rng_for, stream};

/// Named parameters (candle `Var`s), in name order.
#[derive(Clone)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
    device: Device,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("len", &self.len())
            .field("seed", &self.seed)
            .finish()
    }
}

impl ParamStore {
    /// An empty store; parameters are created (and initialised from `(seed, name)`)
    /// the first time a model built on [`ParamStore::var_builder`] asks for them.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
            device: device.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `VarBuilder` that creates trainable parameters (tensors that track gradients).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let backend = StoreBackend {
            store: self.clone(),
            detached: false,
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, self.device.clone())
    }

    /// A `VarBuilder` over the existing parameters, returned detached: they share
    /// storage with the variables (so they see every update) but build no autograd
    /// graph. Use it for evaluation models. Asking for a missing name is an error.
    pub fn detached_var_builder(&self) -> VarBuilder<'static> {
        let backend = StoreBackend {
            store: self.clone(),
            detached: true,
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, self.device.clone())
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Total number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.lock().values().map(|v| v.elem_count()).sum()
    }

    /// All parameters in name order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// One parameter.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// A deep copy: new variables with the same names and values.
    pub fn deep_clone(&self) -> Result<Self> {
        let map = self.lock();
        let mut out = BTreeMap::new();
        for (k, v) in map.iter() {
            out.insert(k.clone(), Var::from_tensor(&v.as_tensor().copy()?)?);
        }
        Ok(Self {
            vars: Arc::new(Mutex::new(out)),
            seed: self.seed,
            device: self.device.clone(),
        })
    }

    /// Overwrite every parameter from `tensors` (keyed by parameter name). Every
    /// parameter must be present with the right shape; extra names are an error.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let map = self.lock();
        for name in tensors.keys() {
            if !map.contains_key(name) {
                candle_core::bail!("unexpected parameter {name:?}")
            }
        }
        for (name, var) in map.iter() {
            let Some(t) = tensors.get(name) else {
                candle_core::bail!("missing parameter {name:?}")
            };
            if t.shape() != var.shape() {
                candle_core::bail!(
                    "parameter {name:?}: shape {:?} expected, found {:?}",
                    var.shape(),
                    t.shape()
                )
            }
            var.set(&t.to_device(&self.device)?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

struct StoreBackend {
    store: ParamStore,
    detached: bool,
}

/// Initial values of a parameter, from `(seed, name)` only.
fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
    let n = shape.elem_count();
    let mut rng = rng_for(seed, stream::INIT, name_hash(name));
    let uniform = |rng: &mut rand_xoshiro::Xoshiro256PlusPlus, lo: f64, up: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
            .collect()
    };
    let normal = |rng: &mut rand_xoshiro::Xoshiro256PlusPlus, mean: f64, std: f64| -> Vec<f32> {
        let mut v = vec![0f32; n];
        fill_standard_normal(rng, &mut v);
        v.iter_mut()
            .for_each(|x| *x = (mean + std * f64::from(*x)) as f32);
        v
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(&mut rng, -b, b)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for StoreBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if dtype != DType::F32 {
            candle_core::bail!("parameter {name:?}: only f32 parameters are supported")
        }
        let mut map = self.store.lock();
        if let Some(v) = map.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter {name:?} exists with shape {:?}, requested {s:?}",
                    v.shape()
                )
            }
            return Ok(if self.detached {
                v.as_tensor().detach()
            } else {
                v.as_tensor().clone()
            });
        }
        if self.detached {
            candle_core::bail!("parameter {name:?} does not exist in the store")
        }
        let values = init_values(self.store.seed, name, &s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?)?;
        let t = var.as_tensor().clone();
        map.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let map = self.store.lock();
        match map.get(name) {
            Some(v) => {
                let t = v.as_tensor().to_device(dev)?.to_dtype(dtype)?;
                Ok(if self.detached { t.detach() } else { t })
            }
            None => candle_core::bail!("parameter {name:?} does not exist in the store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.lock().contains_key(name)
    }
}
