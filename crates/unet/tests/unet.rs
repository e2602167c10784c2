//! Fast CPU tests of the U-Net, its training loop and checkpointing (tiny widths).

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Module, Tensor};
use e2h_unet::{
    AttentionBlock, ConvImpl, EvalConfig, EvalSet, EvalWeights, ForwardMode, ParamStore,
    TrainConfig, TrainError, TrainRun, Trainer, UNet, UNetConfig, checkpoint, clip_grad_norm,
    global_grad_norm, images_to_tensor, log_spaced_steps, train,
};

const PAPER_PARAMS: usize = 35_746_307;

fn cpu() -> Device {
    Device::Cpu
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f32; n];
    let mut rng = e2h_unet::rng::rng_for(seed, 99, 0);
    e2h_unet::rng::fill_standard_normal(&mut rng, &mut v);
    Tensor::from_vec(v, shape, &cpu()).unwrap()
}

/// `n` pseudo-random u8 images of `cfg`'s shape.
fn images(cfg: &UNetConfig, n: usize, seed: u64) -> Vec<u8> {
    use rand::Rng;
    let mut rng = e2h_unet::rng::rng_for(seed, 98, 0);
    (0..n * cfg.image_dim())
        .map(|_| rng.random::<u8>())
        .collect()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

#[test]
fn paper_config_has_ho_parameter_count() {
    let cfg = UNetConfig::paper();
    let store = ParamStore::new(0, &cpu());
    let net = UNet::new(&cfg, store.var_builder()).unwrap();
    assert_eq!(store.param_count(), net.param_count());
    assert_eq!(
        net.param_count(),
        PAPER_PARAMS,
        "Ho et al. CIFAR-10 U-Net: 35.7M"
    );
}

#[test]
fn forward_keeps_image_shape_and_starts_at_zero() {
    // tiny (16x16, two levels) and a 32x32 four-level net with attention at 16
    let wide = UNetConfig {
        image_size: 32,
        base_channels: 16,
        channel_mult: vec![1, 2, 2, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![16],
        dropout: 0.1,
        groups: 8,
        image_channels: 3,
        conv_impl: ConvImpl::Im2col,
    };
    for cfg in [UNetConfig::tiny(), wide] {
        let store = ParamStore::new(1, &cpu());
        let net = UNet::new(&cfg, store.var_builder()).unwrap();
        let s = cfg.image_size;
        let x = randn(&[3, 3, s, s], 5);
        for mode in [
            ForwardMode::eval(),
            ForwardMode::train(3, 1, &cpu()).unwrap(),
        ] {
            let y = net.forward(&x, &[1, 500, 1000], &mode).unwrap();
            assert_eq!(y.dims(), &[3, 3, s, s]);
            // conv_out is zero-initialised: the fresh network predicts exactly zero.
            assert_eq!(max_abs(&y), 0.0);
        }
        // ... but the layers before it are not degenerate.
        assert!(store.param_count() > 0);
        let w = store.get("conv_in.weight").unwrap();
        assert!(max_abs(w.as_tensor()) > 0.0);
        assert_eq!(
            max_abs(store.get("conv_out.weight").unwrap().as_tensor()),
            0.0
        );
    }
}

#[test]
fn conv_implementations_agree_in_the_full_network() {
    let cfg = UNetConfig::tiny();
    let store = ParamStore::new(12, &cpu());
    let ours = UNet::new(&cfg, store.var_builder()).unwrap();
    let candle_cfg = UNetConfig {
        conv_impl: ConvImpl::Candle,
        ..cfg.clone()
    };
    let theirs = UNet::new(&candle_cfg, store.var_builder()).unwrap();
    let w = store.get("conv_out.weight").unwrap();
    w.set(&(randn(w.dims(), 4) * 0.1).unwrap()).unwrap();
    let x = randn(&[2, 3, 16, 16], 6);
    let a = ours.forward(&x, &[3, 700], &ForwardMode::eval()).unwrap();
    let b = theirs.forward(&x, &[3, 700], &ForwardMode::eval()).unwrap();
    assert!(max_abs(&a) > 1e-2);
    assert!(max_abs(&(a - b).unwrap()) < 1e-4);
}

#[test]
fn invalid_group_count_is_rejected() {
    let mut cfg = UNetConfig::tiny();
    cfg.groups = 32; // does not divide 16
    let store = ParamStore::new(1, &cpu());
    assert!(UNet::new(&cfg, store.var_builder()).is_err());
}

#[test]
fn initialisation_is_seeded() {
    let cfg = UNetConfig::tiny();
    let a = ParamStore::new(7, &cpu());
    let b = ParamStore::new(7, &cpu());
    let c = ParamStore::new(8, &cpu());
    UNet::new(&cfg, a.var_builder()).unwrap();
    UNet::new(&cfg, b.var_builder()).unwrap();
    UNet::new(&cfg, c.var_builder()).unwrap();
    let mut differs = false;
    for ((na, va), (_, vc)) in a.vars().iter().zip(c.vars()) {
        let vb = b.get(na).unwrap();
        assert_eq!(bits(va.as_tensor()), bits(vb.as_tensor()), "{na}");
        differs |= bits(va.as_tensor()) != bits(vc.as_tensor());
    }
    assert!(differs);
}

#[test]
fn attention_rows_sum_to_one_and_block_starts_as_identity() {
    let store = ParamStore::new(2, &cpu());
    let attn = AttentionBlock::new(16, 8, store.var_builder().pp("attn")).unwrap();
    let x = (randn(&[2, 16, 4, 4], 3) * 3.0).unwrap();
    let w = attn.attention_weights(&x).unwrap();
    assert_eq!(w.dims(), &[2, 16, 16]);
    let rows = w
        .sum(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for r in rows {
        assert!((r - 1.0).abs() < 1e-5, "row sum {r}");
    }
    assert!(
        w.flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            >= 0.0
    );
    // Not uniform (q and k are random projections).
    let spread = max_abs(&(w.clone() - 1.0 / 16.0).unwrap());
    assert!(spread > 1e-3);
    let y = attn.forward(&x).unwrap();
    assert_eq!(bits(&y), bits(&x), "zero-initialised proj_out");
    // The softmax is differentiable: gradients reach qkv through it.
    let loss = attn
        .attention_weights(&x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(store.get("attn.qkv.weight").unwrap().as_tensor())
        .unwrap();
    assert!(max_abs(g) > 0.0);
}

#[test]
fn gradient_clipping_bounds_the_global_norm() {
    let store = ParamStore::new(4, &cpu());
    let vb = store.var_builder();
    let a = vb
        .get_with_hints((8, 8), "a", candle_nn::Init::Const(3.0))
        .unwrap();
    let b = vb
        .get_with_hints(8, "b", candle_nn::Init::Const(-2.0))
        .unwrap();
    let x = randn(&[4, 8], 1);
    let loss = ((x
        .matmul(&a)
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all())
    .unwrap()
        * 100.0)
        .unwrap();
    let vars = store.vars();
    let mut grads = loss.backward().unwrap();
    // The global norm is the root of the sum of all squared entries.
    let manual: f64 = vars
        .iter()
        .map(|(_, v)| {
            let g = grads.get(v.as_tensor()).unwrap();
            g.to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum::<f64>()
        .sqrt();
    let before = global_grad_norm(&grads, &vars).unwrap();
    assert!((before - manual).abs() <= 1e-5 * manual);
    assert!(before > 10.0);
    let ga = grads.get(&a).unwrap().clone();
    let reported = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
    assert_eq!(reported, before);
    let after = global_grad_norm(&grads, &vars).unwrap();
    assert!(after <= 1.0 + 1e-6 && after > 0.999, "clipped norm {after}");
    // Direction is kept.
    let ratio = (grads.get(&a).unwrap() / &ga)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for r in &ratio {
        assert!((f64::from(*r) - 1.0 / before).abs() < 1e-4 / before);
    }
    // Below the threshold nothing changes.
    let again = clip_grad_norm(&mut grads, &vars, 5.0).unwrap();
    assert!((again - after).abs() < 1e-9);
    assert!((global_grad_norm(&grads, &vars).unwrap() - after).abs() < 1e-9);
}

#[test]
fn dropout_is_seeded_and_inverted() {
    let x = Tensor::ones((4, 1000), DType::F32, &cpu()).unwrap();
    let a = ForwardMode::train(1, 7, &cpu())
        .unwrap()
        .dropout(&x, 0.1)
        .unwrap();
    let b = ForwardMode::train(1, 7, &cpu())
        .unwrap()
        .dropout(&x, 0.1)
        .unwrap();
    let c = ForwardMode::train(1, 8, &cpu())
        .unwrap()
        .dropout(&x, 0.1)
        .unwrap();
    assert_eq!(bits(&a), bits(&b));
    assert_ne!(bits(&a), bits(&c));
    let v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let zeros = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
    assert!((zeros - 0.1).abs() < 0.02, "dropped fraction {zeros}");
    assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
    let e = ForwardMode::eval().dropout(&x, 0.1).unwrap();
    assert_eq!(bits(&e), bits(&x));
}

/// 8x8 images, width 16, (1, 2), attention at 4x4: the cheapest net with every block.
fn micro_model() -> UNetConfig {
    UNetConfig {
        image_size: 8,
        attn_resolutions: vec![4],
        ..UNetConfig::tiny()
    }
}

fn tiny_config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::tiny(seed);
    c.model = micro_model();
    c.batch_size = 4;
    c.lr = 1e-3;
    c.warmup_steps = 2;
    c.ema_decay = Some(0.9);
    c
}

fn eval_sets(cfg: &UNetConfig) -> Vec<EvalSet> {
    let real = images(cfg, 3, 77);
    let s = cfg.image_size;
    vec![
        EvalSet {
            name: "real".into(),
            images: images_to_tensor(&real, 3, s, &cpu()).unwrap(),
        },
        EvalSet {
            name: "gaussian".into(),
            images: (randn(&[3, 3, s, s], 78) * 0.5).unwrap(),
        },
    ]
}

fn eval_config() -> EvalConfig {
    EvalConfig {
        t_levels: vec![10, 500],
        noise_seed: 11,
        batch_size: 2,
        weights: None,
    }
}

fn read_state(dir: &std::path::Path) -> (u64, BTreeMap<String, Tensor>) {
    let (step, path) = checkpoint::list_checkpoints(dir).unwrap().pop().unwrap();
    (step, checkpoint::read(&path, &cpu()).unwrap().tensors)
}

#[test]
fn resumed_run_is_bit_identical_to_uninterrupted_run() {
    let config = tiny_config(21);
    let data = images(&config.model, 10, 5);
    let sets = eval_sets(&config.model);
    let eval = eval_config();
    let max_steps = 8;
    let steps = log_spaced_steps(max_steps);
    assert_eq!(steps, vec![0, 1, 2, 5, 8]);
    fn mk<'a>(
        config: &'a TrainConfig,
        data: &'a [u8],
        sets: &'a [EvalSet],
        eval: &'a EvalConfig,
        steps: &'a [u64],
        dir: &'a std::path::Path,
        max_steps: u64,
    ) -> TrainRun<'a> {
        TrainRun {
            config,
            device: &Device::Cpu,
            data,
            max_steps,
            eval_sets: sets,
            eval,
            eval_steps: steps,
            checkpoint_dir: Some(dir),
            keep_checkpoints: 2,
        }
    }
    let run = |dir, max_steps| mk(&config, &data, &sets, &eval, &steps, dir, max_steps);

    // Uninterrupted.
    let dir_a = tempfile::tempdir().unwrap();
    let mut losses_a = Vec::new();
    let a = train(
        &run(dir_a.path(), max_steps),
        |_| {},
        |s| losses_a.push(s.loss),
    )
    .unwrap();
    assert_eq!(a.resumed_from, None);
    assert_eq!(
        a.history.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![0, 1, 2, 5, 8]
    );
    assert!(a.history.iter().all(|r| r.weights == EvalWeights::Ema));
    assert_eq!(a.eval_weights, EvalWeights::Ema);
    // The raw weights moved further than the EMA (decay 0.9) by step 8.
    let raw = a
        .trainer
        .eval_eps_mse_with(EvalWeights::Raw, &sets[0].images, &[500], 11, 2)
        .unwrap();
    assert_ne!(raw[0], a.history[4].sets[0].levels[1]);
    // Training moved the evaluated (EMA) weights.
    assert_ne!(a.history[0].sets[0].levels, a.history[4].sets[0].levels);
    // Only the newest two checkpoints are kept.
    let kept: Vec<u64> = checkpoint::list_checkpoints(dir_a.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, vec![5, 8]);

    // Killed during step 4 (the panic stands for the kill).
    let dir_b = tempfile::tempdir().unwrap();
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(
            &run(dir_b.path(), max_steps),
            |_| {},
            |s| {
                if s.step == 4 {
                    panic!("killed");
                }
            },
        )
    }));
    assert!(killed.is_err());
    let on_disk: Vec<u64> = checkpoint::list_checkpoints(dir_b.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(on_disk, vec![1, 2]);
    // A torn write of the newest checkpoint: resuming skips it and uses step 1.
    let newest = checkpoint::checkpoint_path(dir_b.path(), 2);
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let mut losses_b = Vec::new();
    let mut new_evals = Vec::new();
    let b = train(
        &run(dir_b.path(), max_steps),
        |r| new_evals.push(r.step),
        |s| losses_b.push((s.step, s.loss)),
    )
    .unwrap();
    assert_eq!(b.resumed_from, Some(1));
    assert_eq!(b.skipped_checkpoints.len(), 1);
    assert_eq!(new_evals, vec![2, 5, 8]);
    assert_eq!(losses_b.first().unwrap().0, 2);
    for (step, loss) in &losses_b {
        assert_eq!(
            loss.to_bits(),
            losses_a[*step as usize - 1].to_bits(),
            "step {step}"
        );
    }
    // Same evaluations (f64 equality of every mean, sem and train-loss mean) ...
    assert_eq!(a.history, b.history);
    // ... and the same final weights, optimizer moments and EMA, bit for bit.
    let (sa, ta) = read_state(dir_a.path());
    let (sb, tb) = read_state(dir_b.path());
    assert_eq!((sa, sb), (8, 8));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    assert!(ta.keys().any(|k| k.starts_with("ema/")));
    assert!(ta.keys().any(|k| k.starts_with("adam_v/")));
    for (k, t) in &ta {
        assert_eq!(bits(t), bits(&tb[k]), "{k}");
    }

    // Extending a finished run continues from its last checkpoint.
    let longer = log_spaced_steps(10);
    let ext = train(
        &TrainRun {
            eval_steps: &longer,
            ..run(dir_a.path(), 10)
        },
        |_| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(ext.resumed_from, Some(8));
    assert_eq!(ext.history.len(), 6);

    // A checkpoint of another configuration is refused, not silently reused.
    let mut other = config.clone();
    other.lr = 5e-4;
    let err = train(
        &TrainRun {
            config: &other,
            ..run(dir_a.path(), 10)
        },
        |_| {},
        |_| {},
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, TrainError::CheckpointMismatch { .. }),
        "{err}"
    );
}

#[test]
fn non_finite_loss_stops_training_naming_the_step() {
    let mut config = tiny_config(3);
    config.lr = 1e30;
    config.warmup_steps = 0;
    config.grad_clip = None;
    let data = images(&config.model, 8, 1);
    let sets = eval_sets(&config.model);
    let eval = eval_config();
    let steps = [0u64];
    let mut seen = Vec::new();
    let err = train(
        &TrainRun {
            config: &config,
            device: &Device::Cpu,
            data: &data,
            max_steps: 20,
            eval_sets: &sets,
            eval: &eval,
            eval_steps: &steps,
            checkpoint_dir: None,
            keep_checkpoints: 1,
        },
        |_| {},
        |s| seen.push(s.step),
    )
    .err()
    .unwrap();
    match err {
        TrainError::NonFinite { step, quantity, .. } => {
            // Step 1 starts from the zero-output network (loss ~ 1); the absurd
            // update makes step 2 overflow.
            assert_eq!(step, 2, "{quantity}");
            assert_eq!(seen, vec![1]);
        }
        e => panic!("expected NonFinite, got {e}"),
    }
    assert!(
        format!(
            "{}",
            TrainError::NonFinite {
                step: 2,
                quantity: "loss",
                value: f64::NAN
            }
        )
        .contains("step 2")
    );
}

#[test]
fn loss_decreases_on_a_trivial_dataset() {
    // One image, repeated: the denoiser can learn it.
    let mut config = TrainConfig::tiny(9);
    config.model = micro_model();
    config.batch_size = 8;
    config.lr = 2e-3;
    config.model.dropout = 0.0;
    let one = images(&config.model, 1, 3);
    let data: Vec<u8> = one.iter().cycle().take(one.len() * 4).copied().collect();
    let mut trainer = Trainer::new(&config, &data, &cpu()).unwrap();
    let set = images_to_tensor(&data[..2 * one.len()], 3, config.model.image_size, &cpu()).unwrap();
    let levels = [50, 300, 700];
    let before = trainer.eval_eps_mse(&set, &levels, 1, 8).unwrap();
    let mut first = Vec::new();
    let mut last = Vec::new();
    for i in 0..40 {
        let s = trainer.step().unwrap();
        if i < 10 {
            first.push(s.loss);
        }
        if i >= 30 {
            last.push(s.loss);
        }
    }
    let after = trainer.eval_eps_mse(&set, &levels, 1, 8).unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("train loss {first:?} -> {last:?}; eval {before:?} -> {after:?}");
    assert!(
        mean(&last) < 0.6 * mean(&first),
        "train loss {:?} -> {:?}",
        first,
        last
    );
    for (b, a) in before.iter().zip(&after) {
        // A zero prediction has eps-MSE ~ 1.
        assert!((b.mean - 1.0).abs() < 0.1, "{b:?}");
        assert!(
            a.mean < 0.8 * b.mean,
            "t = {}: {} -> {}",
            b.t,
            b.mean,
            a.mean
        );
    }
}

#[test]
fn evaluation_uses_common_random_numbers() {
    let config = TrainConfig::tiny(4);
    let data = images(&config.model, 4, 2);
    let trainer = Trainer::new(&config, &data, &cpu()).unwrap();
    let s = config.model.image_size;
    let real = images_to_tensor(&data, 3, s, &cpu()).unwrap();
    let other = (randn(&[4, 3, s, s], 3) * 2.0).unwrap();
    // The fresh network predicts zero, so its loss is ||eps||^2 / d: equal on any
    // two image sets evaluated with the same noise seed, whatever the batching.
    let a = trainer.eval_eps_mse(&real, &[10, 900], 5, 3).unwrap();
    let b = trainer.eval_eps_mse(&other, &[10, 900], 5, 4).unwrap();
    assert_eq!(a, b);
    let c = trainer.eval_eps_mse(&real, &[10, 900], 6, 4).unwrap();
    assert_ne!(a, c);
    assert_eq!(a[0].n, 4);
    assert!(a[0].sem > 0.0);
}

#[test]
fn upsample_and_nin_match_candle_reference_ops() {
    let x = randn(&[2, 3, 4, 5], 1);
    let ours = e2h_unet::upsample::upsample_nearest2x(&x).unwrap();
    let theirs = x.upsample_nearest2d(8, 10).unwrap();
    assert_eq!(bits(&ours), bits(&theirs));

    // The im2col convolution equals candle's conv2d, at stride 1 and 2, with its gradients.
    let store = ParamStore::new(3, &cpu());
    for (stride, size) in [(1usize, 8usize), (2, 8), (2, 7)] {
        let conv = e2h_unet::layers::Conv2d::new(
            4,
            5,
            3,
            stride,
            1,
            false,
            store.var_builder().pp(format!("conv{stride}{size}")),
        )
        .unwrap();
        let xin = candle_core::Var::from_tensor(&randn(&[2, 4, size, size], 8)).unwrap();
        let ours = conv.forward(xin.as_tensor()).unwrap();
        let theirs = conv.forward_candle(xin.as_tensor()).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_abs(&(&ours - &theirs).unwrap()) < 1e-5);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let w = store.get(&format!("conv{stride}{size}.weight")).unwrap();
        for t in [xin.as_tensor(), w.as_tensor()] {
            let d = max_abs(&(g1.get(t).unwrap() - g2.get(t).unwrap()).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }

    let nin = e2h_unet::layers::Nin::new(3, 6, false, store.var_builder().pp("nin")).unwrap();
    let w = store
        .get("nin.weight")
        .unwrap()
        .as_tensor()
        .reshape((6, 3, 1, 1))
        .unwrap();
    let reference = x.conv2d(&w, 0, 1, 1, 1).unwrap();
    let diff = max_abs(&(nin.forward(&x).unwrap() - reference).unwrap());
    assert!(diff < 1e-5, "{diff}");
}
