//! `cargo xtask`: the project's command line (rust-analyzer style: one module per task).

/// `println!` that ends the program quietly when stdout is closed (`xtask ... |
/// head`), as cargo and ripgrep do, instead of panicking.
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same behaviour as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

mod bench;
mod cache_cmd;
mod check;
mod figure;
mod kinds;
mod pipeline;
mod root;
mod run_stage;
mod slurm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Reproducible figure pipelines for Bardone, Merger & Goldt (2026)")]
struct Cli {
    /// Project root: pipelines/, figures/ and cache/ are found here (default: the
    /// project `cargo xtask` runs in, else the nearest one above the current directory).
    #[arg(long, global = true, env = "E2H_ROOT")]
    root: Option<PathBuf>,
    /// Cache directory (default: <root>/cache).
    #[arg(long, global = true, env = "E2H_CACHE")]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build figure N from pipelines/figN-*.yaml.
    Figure {
        number: u32,
        #[command(flatten)]
        run: pipeline::RunArgs,
    },
    /// Run any pipeline file (an ablation, the CIFAR baseline).
    Run {
        pipeline: PathBuf,
        #[command(flatten)]
        run: pipeline::RunArgs,
    },
    /// Run every figure's `ci` profile, evaluate its declared checks and compare
    /// its tables with the committed baselines.
    Check(check::CheckArgs),
    /// Inspect or clean the cache.
    Cache {
        #[command(subcommand)]
        action: cache_cmd::CacheAction,
    },
    /// The stage kinds a pipeline may name; with KIND, its params and the tables it writes.
    Kinds { kind: Option<String> },
    /// Benchmarks against bounds and peers (NumPy, PyTorch), printed as ratios.
    Bench(bench::BenchArgs),
    /// Compute one stage instance (what a Slurm job runs).
    #[command(hide = true)]
    RunStage(run_stage::RunStageArgs),
}

/// candle runs its CPU elementwise ops on its own spin-waiting thread pool,
/// beside rayon's, on which the U-Net's GEMMs and fused kernels run: on few
/// cores the two pools steal each other's time (a U-Net training step took
/// twice as long on 2 busy cores). Keep candle's pool to the calling thread
/// unless the user chose a size; results do not depend on it.
#[allow(unsafe_code)]
fn keep_candle_elementwise_on_one_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the first statement of main, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") }
    }
}

/// candle's matmul asks for its thread count on every call: without
/// `RAYON_NUM_THREADS` it counts the physical cores by parsing /proc/cpuinfo
/// each time (about a hundred times per U-Net training step). Set the variable
/// to the size rayon's pool takes anyway, unless the user chose one.
#[allow(unsafe_code)]
fn fix_rayon_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the first statements of main, before any thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) }
    }
}

/// candle allocates a fresh buffer for every tensor; glibc serves blocks above
/// its mmap threshold (128 KiB at first) with fresh mappings and unmaps them on
/// free, so every activation of a U-Net step paid a page fault per 4 KiB (11%
/// of a training step on 2 cores). Serve blocks up to 32 MiB (glibc's largest
/// threshold) from the heap and keep up to 1 GiB of freed memory for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory_for_reuse() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_for_reuse() {}

/// Runs `work` on a worker of a rayon pool (as many threads as rayon's
/// default) rather than on the main thread beside the pool. The U-Net step
/// alternates candle's serial ops with rayon-parallel kernels; from the main
/// thread that is one thread more than there are cores, and the idle workers'
/// spinning between parallel sections takes time from the serial ops (on 2
/// cores, sched_yield alone was 9% of a training step). On a worker, the
/// calling thread is one of the pool's. Results do not depend on it: the
/// kernels split work by shape, and the GEMMs by candle's thread count.
fn on_a_pool_worker<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().thread_name(|i| format!("xtask-worker-{i}")).build() {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

/// Writes to stdout; a closed stdout (the reader is gone) ends the program with
/// exit 0: everything it asked for was done, only the rest of the report is unread.
pub(crate) fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> std::process::ExitCode {
    keep_candle_elementwise_on_one_thread();
    fix_rayon_thread_count();
    keep_freed_memory_for_reuse();
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in logs or pipes.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("E2H_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let ctx = match pipeline::Context::new(cli.root, cli.cache) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let result = on_a_pool_worker(|| match cli.command {
        Command::Figure { number, run } => figure::pipeline_of(&ctx, number).and_then(|p| pipeline::run(&ctx, &p, &run)),
        Command::Run { pipeline, run } => pipeline::run(&ctx, &pipeline, &run),
        Command::Check(args) => check::run(&ctx, &args),
        Command::Cache { action } => cache_cmd::run(&ctx, action),
        Command::Bench(args) => bench::run(&ctx, &args),
        Command::RunStage(args) => run_stage::run(&ctx, &args),
        Command::Kinds { kind } => kinds::run(&ctx, kind.as_deref()),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> std::process::ExitCode {
    let message = e.to_string();
    eprintln!("error: {message}");
    // Library errors often repeat their source in their own message: print a
    // cause only when it adds something.
    for cause in e.chain().skip(1).map(|c| c.to_string()).filter(|c| !message.contains(c.as_str())) {
        eprintln!("  caused by: {cause}");
    }
    std::process::ExitCode::FAILURE
}
