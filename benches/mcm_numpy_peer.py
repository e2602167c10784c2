#!/usr/bin/env python3
"""NumPy peer of the MCM pSGD simulation (crates/mcm, `Trainer::step`).

The same online projected SGD of the single-neuron spherical denoiser on fresh
mixed-cumulant-model samples, written as a Python user would: vectorised over
independent replicas with NumPy's default generator (PCG64, ziggurat normals).
Per sample it draws what the Rust code draws: lambda, a Rademacher nu, z (d
normals) and the noise xi (d normals).

Prints replica-samples per second for each d (per second of wall-clock time and
per second of CPU time). `cargo xtask bench mcm` runs it beside the Rust
simulation, with BLAS limited to one thread, and prints the ratios; with
`--json` it prints one JSON object per d for that purpose.

    python3 benches/mcm_numpy_peer.py --d 64,128,512 --seconds 2
"""

import argparse
import json
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write(
        "mcm_numpy_peer.py needs NumPy, which is not installed for this Python "
        f"({sys.executable}). Install it with `python3 -m pip install numpy`.\n"
    )
    sys.exit(2)

# The defaults of SPEC.md: beta_u = 2, beta_v = 5, Rademacher nu, independent
# latents, t = 0.3, g(y) = tanh(2y), a = 1; eta = delta / d with delta = 0.5.
BETA_U, BETA_V, T, A, DELTA = 2.0, 5.0, 0.3, 1.0, 0.5


def orthonormal_pair(rng, d):
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(d)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return u, v


def make_step(d, replicas, rng):
    """Returns (step, weights): step() advances every replica by one sample."""
    u, v = orthonormal_pair(rng, d)
    alpha = np.exp(-T)
    sigma = np.sqrt(1.0 - alpha**2)
    sqrt_bu, sqrt_bv = np.sqrt(BETA_U), np.sqrt(BETA_V)
    shrink = 1.0 - 1.0 / np.sqrt(1.0 + BETA_V)
    eta = DELTA / d
    w = rng.standard_normal((replicas, d))
    w /= np.linalg.norm(w, axis=1, keepdims=True)

    def step():
        nonlocal w
        lam = rng.standard_normal(replicas)
        nu = 2.0 * rng.integers(0, 2, replicas) - 1.0
        z = rng.standard_normal((replicas, d))
        # x = sqrt(beta_u) lambda u + S (sqrt(beta_v) nu v + z), S = I - shrink v v^T
        coef_v = sqrt_bv * nu - shrink * (sqrt_bv * nu + z @ v)
        x = z + (sqrt_bu * lam)[:, None] * u + coef_v[:, None] * v
        xt = alpha * x + sigma * rng.standard_normal((replicas, d))
        y = np.einsum("rd,rd->r", w, xt)
        g = np.tanh(2.0 * y)
        dg = 2.0 * (1.0 - g * g)
        r = alpha * xt - x + A * g[:, None] * w
        wr = np.einsum("rd,rd->r", w, r)
        w = w - eta * A * (g[:, None] * r + (dg * wr)[:, None] * xt)
        w /= np.linalg.norm(w, axis=1, keepdims=True)

    return step, lambda: w


def throughput(d, replicas, seconds, seed):
    """Replica-samples per second over about `seconds` of steps: per second of
    wall-clock time and per second of the process's CPU time (which does not
    count time spent descheduled on a busy machine)."""
    rng = np.random.default_rng(seed)
    step, _ = make_step(d, replicas, rng)
    for _ in range(3):  # warm-up: first-call allocations
        step()
    steps = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while True:
        for _ in range(10):
            step()
        steps += 10
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            cpu = max(time.process_time() - start_cpu, 1e-9)
            return steps * replicas / elapsed, steps * replicas / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", default="64,128,512", help="comma-separated dimensions")
    parser.add_argument(
        "--replicas",
        type=int,
        default=256,
        help="replicas vectorised together (256: about NumPy's best here; fewer "
        "pay more interpreter overhead per sample, more spill out of cache)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per d")
    args = parser.parse_args()
    dims = [int(s) for s in args.d.split(",") if s]
    if not args.json:
        print(f"NumPy {np.__version__}, {args.replicas} replicas vectorised, PCG64 + ziggurat normals")
    for d in dims:
        rate, cpu_rate = throughput(d, args.replicas, args.seconds, args.seed)
        if args.json:
            record = {"d": d, "replicas": args.replicas, "samples_per_s": rate, "samples_per_cpu_s": cpu_rate}
            print(json.dumps(record), flush=True)
        else:
            print(f"d = {d:4}: {rate:12.0f} replica-samples/s ({cpu_rate:.0f} per CPU second)", flush=True)


if __name__ == "__main__":
    main()
