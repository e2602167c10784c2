//! Time training steps:
//! `cargo run -p e2h-unet --example step_time -- <tiny|paper|width=N> <batch> <steps> [device] [im2col|candle]`.
//!
//! `width=N` is the paper architecture (32x32, (1,2,2,2), 2 blocks, attention at
//! 16, 32 groups) at base width N. Prints the parameter count and the mean time
//! of the steps after the first.

use std::time::Instant;

use e2h_unet::{TrainConfig, Trainer, UNetConfig, precision, select_device};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("tiny", String::as_str);
    let batch: usize = args.get(1).map_or(8, |s| s.parse().expect("batch"));
    let steps: usize = args.get(2).map_or(3, |s| s.parse().expect("steps"));
    let device = select_device(args.get(3).map_or("cpu", String::as_str)).expect("device");
    let mut config = TrainConfig::paper(0);
    config.model = match which {
        "tiny" => UNetConfig::tiny(),
        "paper" => UNetConfig::paper(),
        w => {
            let width: usize = w
                .strip_prefix("width=")
                .and_then(|n| n.parse().ok())
                .expect("tiny, paper or width=N");
            UNetConfig {
                base_channels: width,
                ..UNetConfig::paper()
            }
        }
    };
    if let Some(imp) = args.get(4) {
        config.model.conv_impl = match imp.as_str() {
            "candle" => e2h_unet::ConvImpl::Candle,
            _ => e2h_unet::ConvImpl::Im2col,
        };
    }
    config.batch_size = batch;
    let m = &config.model;
    let n = batch.max(64);
    let data: Vec<u8> = (0..n * m.image_dim())
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let mut trainer = Trainer::new(&config, &data, &device).expect("trainer");
    println!(
        "{which}: {} parameters, batch {batch}, {:?} convolutions, {} on {:?}",
        trainer.param_count(),
        config.model.conv_impl,
        precision(&device).label(),
        device
    );
    let mut times = Vec::new();
    for _ in 0..steps.max(2) {
        let t0 = Instant::now();
        let s = trainer.step().expect("step");
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "step {}: loss {:.4} (bits {:016x}), grad norm {:.3}, {dt:.3} s",
            s.step,
            s.loss,
            s.loss.to_bits(),
            s.grad_norm
        );
        times.push(dt);
    }
    let rest = &times[1..];
    println!(
        "mean step time after the first: {:.3} s",
        rest.iter().sum::<f64>() / rest.len() as f64
    );
}
