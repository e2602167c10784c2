//! `cargo xtask bench [mcm|cache|unet]`: the project's speed against its bounds
//! and against what users would otherwise run, side by side in one process, as
//! ratios (absolute numbers on shared machines are noise; ratios measured in
//! one run are not). Without a sub-benchmark, all three run with defaults.
//!
//! Measurements are repeated in interleaved rounds, so both sides of a ratio
//! see the same load. One-thread rates are work per second of the thread's CPU
//! time (time taken by other processes on a shared machine does not count);
//! all-thread rates are the best wall-clock round, the least disturbed one.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use e2h_engine::cache::EntryMeta;
use e2h_engine::{Cache, EntryStatus};
use e2h_mcm::model::{SimRng, rng_for};
use e2h_mcm::simulate::{self, PsgdConfig, Readout, Simulator};
use e2h_mcm::{Activation, Coupling, Mcm, McmParams, NetworkLoss, NetworkState, NoiseLevel, NuLaw};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

use crate::pipeline::Context;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// MCM online pSGD: Rust against the bound of its random numbers and the NumPy peer.
    Mcm(McmArgs),
    /// Cached pipeline runs and blake3 verification of a U-Net-sized checkpoint.
    Cache(CacheArgs),
    /// One U-Net training step (and the PyTorch peer, on a GPU machine).
    Unet(UnetArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: Option<BenchCommand>,
}

pub fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        Some(BenchCommand::Mcm(a)) => bench_mcm(ctx, a),
        Some(BenchCommand::Cache(a)) => bench_cache(ctx, a),
        Some(BenchCommand::Unet(a)) => bench_unet(ctx, a),
        None => {
            bench_mcm(ctx, &defaults())?;
            outln!();
            bench_cache(ctx, &defaults())?;
            outln!();
            bench_unet(ctx, &defaults())
        }
    }
}

/// A sub-benchmark's arguments with every default (and environment variable) applied.
fn defaults<A: clap::Args + clap::FromArgMatches>() -> A {
    let command = A::augment_args(clap::Command::new("bench"));
    A::from_arg_matches(&command.get_matches_from(["bench"])).expect("every argument has a default")
}

/// The best (largest) rate over rounds of (units done, time taken).
struct BestRate(f64);

impl BestRate {
    fn new() -> Self {
        BestRate(0.0)
    }

    fn add(&mut self, (units, took): (f64, Duration)) {
        self.0 = self.0.max(units / took.as_secs_f64().max(1e-9));
    }
}

/// CPU time of the calling thread, where Linux exposes it (schedstat). Its
/// resolution is the scheduler tick, so it is summed over whole measurements.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
}

/// The rate of work done by one thread: total units over the thread's total
/// CPU time (time it spent descheduled by other work does not count), or the
/// best wall-clock round where CPU time is not available.
struct ThreadRate {
    units: f64,
    cpu: Option<Duration>,
    best_wall: BestRate,
}

impl ThreadRate {
    fn new() -> Self {
        ThreadRate { units: 0.0, cpu: Some(Duration::ZERO), best_wall: BestRate::new() }
    }

    /// Runs `work` (returning the units it did) on the calling thread.
    fn measure(&mut self, work: impl FnOnce() -> f64) {
        let cpu_before = thread_cpu_time();
        let (units, wall) = timed(work);
        let cpu = cpu_before.zip(thread_cpu_time()).map(|(before, after)| after.saturating_sub(before));
        self.units += units;
        self.cpu = self.cpu.zip(cpu).map(|(total, this)| total + this);
        self.best_wall.add((units, wall));
    }

    fn rate(&self) -> f64 {
        match self.cpu {
            Some(cpu) if cpu > Duration::ZERO => self.units / cpu.as_secs_f64(),
            _ => self.best_wall.0,
        }
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Compact rates: 123, 1.23e4, 4.56e5.
fn rate(x: f64) -> String {
    if x < 1e4 { format!("{x:.0}") } else { format!("{x:.2e}") }
}

// ---------------------------------------------------------------- mcm

#[derive(clap::Args, Debug, Clone)]
pub struct McmArgs {
    /// Dimensions.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 128, 1024, 65536])]
    pub d: Vec<usize>,
    /// Seconds spent on each measurement (split over the rounds).
    #[arg(long, default_value_t = 0.8)]
    pub seconds: f64,
    /// Interleaved rounds per measurement (summed over the thread's CPU time).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Replicas the NumPy peer vectorises over.
    #[arg(long, default_value_t = 256)]
    pub numpy_replicas: usize,
    /// The NumPy peer runs only up to this d (its arrays are replicas x d).
    #[arg(long, default_value_t = 4096)]
    pub numpy_max_d: usize,
    /// Skip the NumPy peer.
    #[arg(long)]
    pub no_numpy: bool,
    /// Python interpreter for the peer.
    #[arg(long, env = "E2H_PYTHON", default_value = "python3")]
    pub python: String,
}

/// The setting of the NumPy peer and of SPEC.md's defaults: one tanh(2y)
/// neuron, beta_u = 2, beta_v = 5, Rademacher nu, independent latents, t = 0.3.
fn mcm_setting(d: usize, simulator: Simulator) -> (Mcm, PsgdConfig) {
    let params = McmParams { d, beta_u: 2.0, beta_v: 5.0, nu: NuLaw::Rademacher, coupling: Coupling::None };
    let cfg = PsgdConfig {
        noise: NoiseLevel::at(0.3),
        neurons: 1,
        activation: Activation::Tanh2,
        readout: Readout::Fixed { a: 1.0 },
        delta: 0.5,
        lr_exponent: 1.0,
        simulator,
    };
    (Mcm::new(params, 1), cfg)
}

/// Draws the 2d + 2 normals of `samples` samples with the simulation's
/// generator and normal sampler, and nothing else (the bound of the full
/// simulator); returns the number of samples.
fn draw_normals_only(d: usize, samples: u64, rng: &mut SimRng) -> f64 {
    let mut buf = vec![0.0f64; 2 * d + 2];
    for _ in 0..samples {
        for b in buf.iter_mut() {
            *b = StandardNormal.sample(rng);
        }
        black_box(&mut buf);
    }
    samples as f64
}

/// pSGD through the pipelines' own entry point (`mcm.recovery` calls
/// `recovery_times`): `replicas` replicas of `samples` samples each, on the
/// current rayon pool; returns the number of replica-samples. The threshold is
/// above any |overlap| <= 1, so every replica runs its whole budget.
fn psgd(model: &Mcm, cfg: PsgdConfig, replicas: u64, samples: u64) -> f64 {
    let stride = (model.params.d as u64 / 8).max(1);
    let runs = simulate::recovery_times(model, cfg, 7, replicas, simulate::Direction::U, 2.0, samples, stride, &|_| {});
    black_box(runs);
    (replicas * samples) as f64
}

struct McmRow {
    d: usize,
    /// Per second of one thread's CPU time.
    bound: f64,
    full: f64,
    reduced: f64,
    numpy: Option<PeerRate>,
}

/// Samples a round of `work` should take to last `seconds`, from a first short run.
fn round_size(seconds: f64, mut work: impl FnMut(u64) -> f64) -> u64 {
    let (n, t) = timed(|| work(200));
    ((n / t.as_secs_f64().max(1e-9)) * seconds).max(100.0) as u64
}

fn bench_mcm(ctx: &Context, args: &McmArgs) -> anyhow::Result<()> {
    let single_pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let rounds = args.rounds.max(1);
    let round_seconds = args.seconds / rounds as f64;
    let per_thread = if thread_cpu_time().is_some() { "per second of the thread's CPU time" } else { "best round" };
    outln!("MCM online pSGD, one tanh(2y) neuron, beta_u 2, beta_v 5, Rademacher nu, t 0.3 (replica-samples/s, one thread)");
    let mut rows = Vec::new();
    for &d in &args.d {
        let (model, full_cfg) = mcm_setting(d, Simulator::Full);
        let reduced_cfg = PsgdConfig { simulator: Simulator::Reduced, ..full_cfg };
        let mut rng = rng_for(1, 0);
        let bound_samples = round_size(round_seconds, |n| draw_normals_only(d, n, &mut rng));
        let full_samples = round_size(round_seconds, |n| single_pool.install(|| psgd(&model, full_cfg, 1, n)));
        let reduced_samples = round_size(round_seconds, |n| single_pool.install(|| psgd(&model, reduced_cfg, 1, n)));
        let (mut bound, mut full, mut reduced) = (ThreadRate::new(), ThreadRate::new(), ThreadRate::new());
        for _ in 0..rounds {
            bound.measure(|| draw_normals_only(d, bound_samples, &mut rng));
            // The pool's one worker runs the replica, so it measures its own CPU time.
            (full, reduced) = single_pool.install(|| {
                full.measure(|| psgd(&model, full_cfg, 1, full_samples));
                reduced.measure(|| psgd(&model, reduced_cfg, 1, reduced_samples));
                (full, reduced)
            });
        }
        rows.push(McmRow { d, bound: bound.rate(), full: full.rate(), reduced: reduced.rate(), numpy: None });
    }
    // The peer runs after the Rust side, so neither competes with the other.
    let mut numpy_note = None;
    if !args.no_numpy {
        match numpy_peer(ctx, args) {
            Ok(rates) => {
                for row in &mut rows {
                    row.numpy = rates.iter().find(|p| p.d == row.d).copied();
                }
            }
            Err(e) => numpy_note = Some(format!("NumPy peer not run: {e:#}")),
        }
    }

    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.1}x", a / b));
    outln!(
        "{:>6} | {:>9} {:>9} {:>6} | {:>9} {:>9} | {:>9} {:>10} {:>10}",
        "d", "bound", "full", "/bound", "reduced", "/full", "NumPy", "full/NumPy", "red./NumPy"
    );
    for r in &rows {
        let np = r.numpy.as_ref().map(|p| p.cpu);
        outln!(
            "{:>6} | {:>9} {:>9} {:>6.2} | {:>9} {:>9} | {:>9} {:>10} {:>10}",
            r.d,
            rate(r.bound),
            rate(r.full),
            r.full / r.bound,
            rate(r.reduced),
            ratio(r.reduced, Some(r.full)),
            np.map_or("-".into(), rate),
            ratio(r.full, np),
            ratio(r.reduced, np),
        );
    }
    outln!(
        "{per_thread}, {rounds} interleaved rounds.\n\
         bound: drawing a sample's 2d + 2 normals alone with the same generator and sampler (xoshiro256++, ziggurat).\n\
         full: d-dimensional samples and weights; reduced: the exact chain on the overlaps (crates/mcm/src/reduced.rs).\n\
         NumPy: benches/mcm_numpy_peer.py (the full update), {} replicas vectorised, one thread (BLAS too), up to d = {}.",
        args.numpy_replicas, args.numpy_max_d
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let full_met: Vec<usize> = rows.iter().filter(|r| r.full >= 0.6 * r.bound).map(|r| r.d).collect();
    outln!("target full >= 60% of its bound: met at d = {full_met:?} of {:?}", rows.iter().map(|r| r.d).collect::<Vec<_>>());
    let flat: Vec<f64> = rows.iter().filter(|r| [64, 1024, 65536].contains(&r.d)).map(|r| r.reduced).collect();
    if flat.len() == 3 {
        let spread = flat.iter().cloned().fold(f64::MIN, f64::max) / flat.iter().cloned().fold(f64::MAX, f64::min);
        outln!("target reduced flat in d (d = 64, 1024, 65536 within 1.5x): max/min = {spread:.2}, {}", verdict(spread <= 1.5));
    }
    if let Some(r) = rows.iter().find(|r| r.d == 1024) {
        let x = r.reduced / r.full;
        outln!("target reduced >= 100x full at d = 1024: {x:.0}x, {}", verdict(x >= 100.0));
    }
    if let Some((r, np)) = rows.iter().find(|r| r.d == 128).and_then(|r| r.numpy.map(|p| (r, p.cpu))) {
        let x = r.reduced / np;
        outln!("target reduced >= 50x NumPy at d = 128, thread for thread: {x:.0}x, {}", verdict(x >= 50.0));
    }
    if let Some(note) = numpy_note {
        outln!("{note}");
    }
    bench_network_loss(&single_pool, rounds, round_seconds);
    Ok(())
}

/// The exact population losses (MCM and surrogate) of K = 2 neurons with
/// readouts, as Figure 2 evaluates them at every logged point: milliseconds
/// per call on one thread, against the target of 10 ms.
fn bench_network_loss(single_pool: &rayon::ThreadPool, rounds: usize, round_seconds: f64) {
    outln!("\nExact population losses of K = 2 neurons with readouts (MCM and surrogate; tanh(2y), t 0.3), one thread:");
    // Two neurons with overlaps on u, v and the bulk, and nonzero readouts.
    let state = NetworkState::from_coordinates(
        &[vec![0.8, 0.3, 0.52, 0.0], vec![0.2, 0.7, 0.1, 0.68]],
        vec![0.5, 0.4],
        vec![0.2, -0.3],
    );
    for (name, coupling) in [("independent latents", Coupling::None), ("linear coupling rho 0.8", Coupling::Linear { rho: 0.8 })] {
        let params = McmParams { d: 64, beta_u: 2.0, beta_v: 5.0, nu: NuLaw::Rademacher, coupling };
        let loss = NetworkLoss::new(params, NoiseLevel::at(0.3), Activation::Tanh2);
        let mut per_call = ThreadRate::new();
        single_pool.install(|| {
            for _ in 0..rounds {
                per_call.measure(|| {
                    let start = Instant::now();
                    let mut calls = 0.0;
                    while calls < 1.0 || start.elapsed().as_secs_f64() < round_seconds {
                        black_box(loss.losses(black_box(&state)).expect("a valid state"));
                        calls += 1.0;
                    }
                    calls
                });
            }
        });
        let ms = 1e3 / per_call.rate();
        outln!("  {name}: {ms:.2} ms per call; target < 10 ms: {}", if ms < 10.0 { "met" } else { "missed" });
    }
}

/// Throughput of the NumPy peer at one d.
#[derive(Clone, Copy)]
struct PeerRate {
    d: usize,
    /// Replica-samples per second of the process's CPU time.
    cpu: f64,
}

/// Runs benches/mcm_numpy_peer.py on one thread (BLAS included).
fn numpy_peer(ctx: &Context, args: &McmArgs) -> anyhow::Result<Vec<PeerRate>> {
    let script = ctx.root.join("benches/mcm_numpy_peer.py");
    let dims = args.d.iter().filter(|d| **d <= args.numpy_max_d).map(usize::to_string).collect::<Vec<_>>().join(",");
    if dims.is_empty() {
        bail!("no d up to --numpy-max-d {}", args.numpy_max_d);
    }
    let out = Command::new(&args.python)
        .arg(&script)
        .args(["--json", "--d", &dims, "--seconds", &args.seconds.to_string()])
        .args(["--replicas", &args.numpy_replicas.to_string()])
        .envs(["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"].map(|var| (var, "1")))
        .output()
        .with_context(|| format!("cannot run `{}` (set --python or E2H_PYTHON)", args.python))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut rates = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("peer printed `{line}`"))?;
        let (Some(d), Some(cpu)) = (v["d"].as_u64(), v["samples_per_cpu_s"].as_f64()) else {
            bail!("peer printed `{line}` without d and samples_per_cpu_s");
        };
        rates.push(PeerRate { d: d as usize, cpu });
    }
    Ok(rates)
}

// ---------------------------------------------------------------- cache

#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// The figure whose pipeline is run (first to fill a temporary cache, then cached).
    #[arg(long, default_value_t = 4)]
    pub figure: u32,
    /// Its profile.
    #[arg(long, default_value = "ci")]
    pub profile: String,
    /// Cached runs timed.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Size of the checkpoint written, hashed and verified (143 MB: the paper
    /// U-Net's 35.7M f32 parameters).
    #[arg(long, default_value_t = 143)]
    pub checkpoint_mb: usize,
}

fn bench_cache(ctx: &Context, args: &CacheArgs) -> anyhow::Result<()> {
    // Everything happens under a temporary directory: the project's cache,
    // figures and pipelines are only read.
    let tmp = tempfile::Builder::new().prefix("e2h-bench-").tempdir()?;
    outln!("Cache overhead (in a temporary project and cache)");
    bench_cached_pipeline(ctx, args, tmp.path())?;
    bench_checkpoint_hashing(args, &tmp.path().join("checkpoint-cache"))
}

fn bench_cached_pipeline(ctx: &Context, args: &CacheArgs, tmp: &Path) -> anyhow::Result<()> {
    let root = tmp.join("project");
    let cache_dir = root.join("cache");
    copy_dir(&ctx.root.join("pipelines"), &root.join("pipelines"))?;
    let bench_ctx = Context::new(Some(root.clone()), Some(cache_dir.clone()))?;
    let pipeline = crate::figure::pipeline_of(&bench_ctx, args.figure)?;
    // This very binary, as `cargo xtask figure N` runs it (without cargo's own check of the build).
    let exe = std::env::current_exe()?;
    let figure_run = || -> anyhow::Result<Duration> {
        let number = args.figure.to_string();
        let (out, took) = timed(|| {
            Command::new(&exe)
                .arg("--root")
                .arg(&root)
                .arg("--cache")
                .arg(&cache_dir)
                .args(["figure", &number, "--profile", &args.profile])
                .env("E2H_LOG", "warn")
                .output()
        });
        let out = out?;
        if !out.status.success() {
            bail!("xtask figure {number} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(took)
    };
    let first = figure_run()?;
    let mut cached: Vec<f64> = Vec::new();
    for _ in 0..args.repeats.max(1) {
        cached.push(figure_run()?.as_secs_f64());
    }
    cached.sort_by(f64::total_cmp);
    let fastest = cached[0];
    let median = cached[cached.len() / 2];

    // In-process: planning, and verifying every entry (blake3 of every file).
    let (plan, plan_time) = timed(|| bench_ctx.plan(&pipeline, Some(&args.profile)));
    let (_, plan) = plan?;
    let cache = bench_ctx.cache()?;
    let (valid, verify_time) = timed(|| plan.stages.iter().filter(|s| matches!(cache.status(&s.key), EntryStatus::Valid(_))).count());
    let bytes: u64 = plan
        .stages
        .iter()
        .filter_map(|s| match cache.status(&s.key) {
            EntryStatus::Valid(meta) => Some(meta.files.values().map(|f| f.bytes).sum::<u64>()),
            _ => None,
        })
        .sum();
    anyhow::ensure!(valid == plan.stages.len(), "only {valid} of {} entries are cached after a run", plan.stages.len());
    outln!(
        "  figure {} ({} profile, {} stages): first run {:.2} s; fully cached run {:.3} s best, {:.3} s median of {} (whole process) -> target < 1 s: {}",
        args.figure,
        args.profile,
        plan.stages.len(),
        first.as_secs_f64(),
        fastest,
        median,
        cached.len(),
        if median < 1.0 { "met" } else { "missed" }
    );
    outln!(
        "    of which planning {:.1} ms, verifying {} entries ({:.2} MB) {:.1} ms",
        plan_time.as_secs_f64() * 1e3,
        valid,
        bytes as f64 / 1e6,
        verify_time.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Writes a checkpoint-sized file into a cache entry through the engine, then
/// times the commit (blake3 of every file) and a verification (the same).
fn bench_checkpoint_hashing(args: &CacheArgs, cache_dir: &Path) -> anyhow::Result<()> {
    let cache = Cache::open(cache_dir)?;
    let key = "bench-checkpoint";
    let pending = cache.begin(key)?;
    let path = pending.dir().join("checkpoint.safetensors");
    let bytes = args.checkpoint_mb * 1_000_000;
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut rng = rng_for(3, 0);
        let mut chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            rng.fill_bytes(&mut chunk);
            let n = left.min(chunk.len());
            file.write_all(&chunk[..n])?;
            left -= n;
        }
        file.flush()?;
    }
    let meta = EntryMeta {
        key: key.into(),
        pipeline: "bench".into(),
        stage: "checkpoint".into(),
        kind: "bench.checkpoint".into(),
        kind_version: "1".into(),
        code: Default::default(),
        params: serde_json::json!({}),
        seed: 0,
        inputs: Default::default(),
        adopted: Vec::new(),
        crate_versions: Default::default(),
        git_commit: None,
        started: String::new(),
        finished: String::new(),
        wall_seconds: 0.0,
        tables: Default::default(),
        files: Default::default(),
        info: Default::default(),
    };
    let (committed, commit_time) = timed(|| pending.commit(meta));
    committed?;
    let mut verify = BestRate::new();
    for _ in 0..3 {
        let (status, took) = timed(|| cache.status(key));
        anyhow::ensure!(matches!(status, EntryStatus::Valid(_)), "the checkpoint entry does not verify");
        verify.add((bytes as f64, took));
    }
    let mb = bytes as f64 / 1e6;
    outln!(
        "  {mb:.0} MB checkpoint entry: commit (hash + metadata) {:.3} s, verify {:.3} s = {:.2} GB/s (file in the page cache)",
        commit_time.as_secs_f64(),
        bytes as f64 / verify.0,
        verify.0 / 1e9
    );
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- unet

#[derive(clap::Args, Debug, Clone)]
pub struct UnetArgs {
    /// Base widths of the paper architecture ((1,2,2,2), two residual blocks,
    /// attention at 16x16, 32 groups; 32 is the smallest width 32 groups allow),
    /// comma-separated: each is measured in turn, with its peer right after it.
    #[arg(long, value_delimiter = ',', default_values_t = [32])]
    pub width: Vec<usize>,
    /// Channel multipliers per level.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 2, 2])]
    pub channel_mult: Vec<usize>,
    /// Images per step (default: 2 on the CPU, 128 on a GPU).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed steps per round, after one untimed warm-up step.
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Rounds of timed steps; with the peer, its rounds alternate with the
    /// project's, so that both sides see the same load on a shared machine.
    /// Each side is reported by its best round, the least disturbed one.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// cpu, cuda or cuda:N (cuda needs xtask built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// TF32 matrix multiplies (CUDA), for both the project and the peer.
    #[arg(long)]
    pub tf32: bool,
    /// Also run benches/unet_torch_peer.py (default: on CUDA devices).
    #[arg(long)]
    pub torch: bool,
    /// Python interpreter for the peer.
    #[arg(long, env = "E2H_PYTHON", default_value = "python3")]
    pub python: String,
}

fn bench_unet(ctx: &Context, args: &UnetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.width.is_empty(), "--width needs at least one width");
    let mut ratios = Vec::new();
    for &width in &args.width {
        if let Some(ratio) = bench_unet_width(ctx, args, width)? {
            ratios.push((width, ratio));
        }
    }
    if ratios.len() > 1 {
        let list: Vec<String> = ratios.iter().map(|(w, r)| format!("width {w}: {r:.2}")).collect();
        outln!("project / PyTorch per step: {}", list.join(", "));
    }
    Ok(())
}

/// One width: the project's step, then the peer's; the ratio when the peer ran.
fn bench_unet_width(ctx: &Context, args: &UnetArgs, width: usize) -> anyhow::Result<Option<f64>> {
    let device = e2h_unet::select_device(&args.device)?;
    let on_gpu = device.is_cuda();
    e2h_unet::set_tf32(args.tf32 && on_gpu);
    let batch = args.batch.unwrap_or(if on_gpu { 128 } else { 2 });
    let mut config = e2h_unet::TrainConfig::paper(0);
    config.model = e2h_unet::UNetConfig {
        base_channels: width,
        channel_mult: args.channel_mult.clone(),
        ..e2h_unet::UNetConfig::paper()
    };
    config.batch_size = batch;
    // Synthetic images: the step's cost does not depend on their content.
    let images = batch.max(64);
    let data: Vec<u8> = (0..images * config.model.image_dim()).map(|i| (i * 7919 % 251) as u8).collect();
    let mut trainer = e2h_unet::Trainer::new(&config, &data, &device)?;
    let (first, warmup) = timed(|| trainer.step());
    first?;
    // The forward GEMM of a first-level 3x3 convolution: weights (width x 9
    // width) times the batch's patches; most of the step's work has this shape.
    let gemm_shape = (width, 9 * width, batch * config.model.image_size * config.model.image_size);
    let steps = args.steps.max(1);
    let mut with_peer = args.torch || on_gpu;
    let (mut ours, mut theirs, mut peer_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        let mut total = Duration::ZERO;
        for _ in 0..steps {
            let (stats, took) = timed(|| trainer.step());
            stats?;
            total += took;
        }
        ours.push(total.as_secs_f64() * 1e3 / steps as f64);
        if with_peer {
            match torch_peer(ctx, args, width, batch, gemm_shape) {
                Ok(peer) => {
                    theirs.push(peer.ms_per_step);
                    peer_runs.push(peer);
                }
                Err(e) => {
                    outln!("  PyTorch peer not run: {e:#}");
                    with_peer = false;
                }
            }
        }
    }
    let rounds_ms = |v: &[f64]| v.iter().map(|ms| format!("{ms:.1}")).collect::<Vec<_>>().join(", ");
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let best_ms = best(&ours);
    let precision = e2h_unet::precision(&device);
    outln!(
        "U-Net training step (e2h-unet on {}, {}): width {}, {:?}, {} parameters, batch {batch}",
        precision.device,
        precision.label(),
        width,
        args.channel_mult,
        trainer.param_count()
    );
    outln!(
        "  {best_ms:.1} ms per step (best of {} rounds of {steps} steps: {} ms; warm-up step {:.1} ms)",
        ours.len(),
        rounds_ms(&ours),
        warmup.as_secs_f64() * 1e3
    );
    if !on_gpu {
        outln!(
            "  the GPU comparison with PyTorch needs the cuda build on a GPU machine:\n    \
             cargo build --release -p xtask --features cuda && \
             target/release/xtask bench unet --device cuda --width 128 --tf32"
        );
    }
    let project_gemm = (!on_gpu).then(|| gemm_gflops(gemm_shape));
    if let Some(g) = project_gemm {
        outln!("  GEMM {}x{}x{} (a first-level convolution): {g:.0} GFLOP/s", gemm_shape.0, gemm_shape.1, gemm_shape.2);
    }
    let Some(peer) = peer_runs.first() else {
        return Ok(None);
    };
    let peer_ms = best(&theirs);
    let ratio = best_ms / peer_ms;
    outln!(
        "  PyTorch peer: {peer_ms:.1} ms per step (best of {} rounds, alternating with the project's: {} ms; {} parameters) -> project / PyTorch = {ratio:.2}",
        theirs.len(),
        rounds_ms(&theirs),
        peer.params
    );
    if peer.params != trainer.param_count() as u64 {
        outln!("  warning: the peer's parameter count differs from the project's");
    }
    if let Some(gflop) = peer.step_gflop {
        outln!(
            "  {gflop:.1} GFLOP per step (PyTorch's count): project {:.0} GFLOP/s, PyTorch {:.0} GFLOP/s",
            gflop / (best_ms / 1e3),
            gflop / (peer_ms / 1e3)
        );
    }
    let peer_gemm = peer_runs.iter().filter_map(|p| p.gemm_gflops).fold(None, |a: Option<f64>, g| Some(a.map_or(g, |a| a.max(g))));
    if let (Some(p), Some(t)) = (project_gemm, peer_gemm) {
        outln!("  the same GEMM in PyTorch: {t:.0} GFLOP/s (project / PyTorch throughput {:.2})", p / t);
    }
    Ok(Some(ratio))
}

/// Best of 5 rounds of 5 products, in GFLOP/s, of the project's CPU GEMM
/// (`e2h_unet::kernels::gemm`) on row-major (m x k) and (k x n) operands.
fn gemm_gflops((m, k, n): (usize, usize, usize)) -> f64 {
    use e2h_unet::kernels::gemm::{Mat, matmul};
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let mut dst = vec![0f32; m * n];
    let mut product = || matmul(&mut dst, false, Mat::row_major(&a, m, k), Mat::row_major(&b, k, n));
    product();
    let best = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..5 {
                product();
            }
            started.elapsed().as_secs_f64() / 5.0
        })
        .fold(f64::INFINITY, f64::min);
    black_box(&dst);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// What the PyTorch peer printed.
struct PeerStep {
    ms_per_step: f64,
    params: u64,
    /// Floating-point work of one step by PyTorch's flop counter.
    step_gflop: Option<f64>,
    /// Throughput of the GEMM of `gemm_shape`.
    gemm_gflops: Option<f64>,
}

/// Runs benches/unet_torch_peer.py with the same architecture and batch.
fn torch_peer(
    ctx: &Context,
    args: &UnetArgs,
    width: usize,
    batch: usize,
    gemm_shape: (usize, usize, usize),
) -> anyhow::Result<PeerStep> {
    let script: PathBuf = ctx.root.join("benches/unet_torch_peer.py");
    let mult = args.channel_mult.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let device = if args.device == "cpu" { "cpu".to_string() } else { args.device.clone() };
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script).args(["--json", "--width", &width.to_string(), "--channel-mult", &mult]);
    cmd.args(["--batch", &batch.to_string(), "--device", &device]);
    cmd.args(["--steps", &args.steps.max(1).to_string(), "--warmup", "3"]);
    cmd.args(["--gemm", &format!("{},{},{}", gemm_shape.0, gemm_shape.1, gemm_shape.2)]);
    if args.tf32 {
        cmd.arg("--tf32");
    }
    let out = cmd.output().with_context(|| format!("cannot run `{}` (set --python or E2H_PYTHON)", args.python))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rfind(|l| l.starts_with('{')).context("the peer printed no result")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let (Some(ms_per_step), Some(params)) = (v["ms_per_step"].as_f64(), v["params"].as_u64()) else {
        bail!("peer printed `{line}` without ms_per_step and params");
    };
    Ok(PeerStep { ms_per_step, params, step_gflop: v["step_gflop"].as_f64(), gemm_gflops: v["gemm_gflops"].as_f64() })
}
