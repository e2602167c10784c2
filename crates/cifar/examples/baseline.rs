//! Print the linear-denoiser baseline table for CIFAR-10, with timings.
//!
//! ```text
//! HF_HOME=<prepared cache> cargo run -p e2h-cifar --example baseline [-- N_TEST [SEED]]
//! ```
//!
//! The data comes through the hub cache (HF_HOME) or the network. N_TEST is the
//! number of test images (and surrogate samples) for the empirical losses; default
//! all 10,000.

use std::time::Instant;

use e2h_cifar::{
    BaselineConfig, DIM, DdpmSchedule, GaussianModel, Split, baseline_table, eigh, load_split,
    mean_and_covariance,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        let mut source = e.source();
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n_test: Option<usize> = args.first().map(|s| s.parse()).transpose()?;
    let seed: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);

    let t0 = Instant::now();
    let train = load_split(Split::Train, None)?;
    let test = load_split(Split::Test, None)?;
    println!(
        "loaded {} train + {} test images in {:.2} s ({} threads)",
        train.n,
        test.n,
        t0.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );

    let x = train.to_f64();
    let t1 = Instant::now();
    let (mu, cov) = mean_and_covariance(&x, DIM);
    let t_cov = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let e = eigh(cov.as_ref())?;
    let t_eig = t2.elapsed().as_secs_f64();
    println!("mean + covariance of {} x {DIM}: {t_cov:.2} s", train.n);
    println!("symmetric eigendecomposition {DIM} x {DIM}: {t_eig:.2} s");
    let trace: f64 = e.values.iter().sum();
    println!(
        "eigenvalues: largest {:.4}, smallest {:.3e}, trace {:.3}, {} negative before clipping (min {:.3e})",
        e.values[0],
        e.values[DIM - 1],
        trace,
        e.n_clipped,
        e.min_raw
    );
    let model = GaussianModel {
        mean: mu,
        eigenvalues: e.values,
        eigenvectors: e.vectors,
        n_samples: train.n,
    };

    let cfg = BaselineConfig {
        n_test,
        seed,
        ..BaselineConfig::default()
    };
    let t3 = Instant::now();
    let rows = baseline_table(&model, &test, &DdpmSchedule::default(), &cfg)?;
    println!(
        "baseline on {} test images / surrogate samples: {:.2} s",
        n_test.map_or(test.n, |n| n.min(test.n)),
        t3.elapsed().as_secs_f64()
    );
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "t", "alpha_bar", "mmse", "real", "real_se", "surrogate", "surr_se", "z_surr"
    );
    for r in &rows {
        println!(
            "{:>5} {:>10.6} {:>10.6} {:>10.6} {:>9.2e} {:>10.6} {:>9.2e} {:>8.2}",
            r.t,
            r.alpha_bar,
            r.mmse_analytic,
            r.wiener_real,
            r.wiener_real_se,
            r.wiener_surrogate,
            r.wiener_surrogate_se,
            (r.wiener_surrogate - r.mmse_analytic) / r.wiener_surrogate_se
        );
    }
    Ok(())
}
