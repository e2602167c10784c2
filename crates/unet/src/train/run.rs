//! The resumable training loop [`train`]: evaluations at chosen steps, a
//! checkpoint after each, resumption from the newest readable one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::device::{Precision, precision};
use crate::error::TrainError;
use crate::rng::fingerprint;
use super::{config::*, eval::*, trainer::*};

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
}
