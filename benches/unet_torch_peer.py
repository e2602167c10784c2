#!/usr/bin/env python3
"""PyTorch peer of the project's U-Net training step (crates/unet).

The DDPM U-Net of Ho et al. 2020 exactly as crates/unet builds it (same blocks,
channel counts, attention, GroupNorm eps 1e-6, initialisation) and the same
training step as `e2h_unet::Trainer::step`: a batch of uint8 images with random
horizontal flips, uniform noise levels t in 1..=1000 of the linear DDPM
schedule, epsilon-prediction MSE, backward, gradient clipping at global norm 1,
AdamW (lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0 as in the
project's default), EMA of the weights (0.9999). The loss is read back every
step, as the project does to stop on non-finite values. Eager mode, f32, with
TF32 matrix multiplies and convolutions only when --tf32 is given.

Prints the parameter count (to check it against the project's) and the mean
time of a training step after warm-up. `cargo xtask bench unet --torch` runs it
beside the project's step; with --json it prints one JSON object.

    python3 benches/unet_torch_peer.py --width 128 --batch 128 --tf32
"""

import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.stderr.write(
        "unet_torch_peer.py needs PyTorch, which is not installed for this Python "
        f"({sys.executable}); install it on the GPU machine (see https://pytorch.org).\n"
    )
    sys.exit(2)


def fan_avg_uniform_(weight, zero=False):
    """TensorFlow variance_scaling(1, "fan_avg", "uniform"), as crates/unet/src/layers.rs."""
    if zero:
        nn.init.zeros_(weight)
        return
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound)


def conv(c_in, c_out, kernel=3, stride=1, zero=False):
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
    fan_avg_uniform_(layer.weight, zero)
    nn.init.zeros_(layer.bias)
    return layer


def dense(d_in, d_out):
    layer = nn.Linear(d_in, d_out)
    fan_avg_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(groups, channels):
    return nn.GroupNorm(groups, channels, eps=1e-6)


def sinusoidal_embedding(steps, dim):
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(-scale * torch.arange(half, device=steps.device, dtype=torch.float32))
    args = steps.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, temb_dim, groups, dropout):
        super().__init__()
        self.norm1 = group_norm(groups, c_in)
        self.conv1 = conv(c_in, c_out)
        self.temb_proj = dense(temb_dim, c_out)
        self.norm2 = group_norm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(c_out, c_out, zero=True)
        self.nin_shortcut = conv(c_in, c_out, kernel=1) if c_in != c_out else None

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = group_norm(groups, channels)
        self.qkv = conv(channels, 3 * channels, kernel=1)
        self.proj_out = conv(channels, channels, kernel=1, zero=True)
        self.channels = channels

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).chunk(3, dim=1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class UNet(nn.Module):
    """crates/unet/src/unet.rs: conv_in, levels down, mid, levels up, norm_out, conv_out."""

    def __init__(self, width, channel_mult, num_res_blocks, attn_resolutions, dropout, groups,
                 image_channels=3, image_size=32):
        super().__init__()
        self.width = width
        temb_dim = 4 * width
        self.temb_dense0 = dense(width, temb_dim)
        self.temb_dense1 = dense(temb_dim, temb_dim)
        self.conv_in = conv(image_channels, width)
        skips, ch, res = [width], width, image_size
        self.down = nn.ModuleList()
        for i, mult in enumerate(channel_mult):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock(ch, width * mult, temb_dim, groups, dropout))
                ch = width * mult
                level.attns.append(AttentionBlock(ch, groups) if res in attn_resolutions else nn.Identity())
                skips.append(ch)
            last = i + 1 == len(channel_mult)
            level.downsample = None if last else conv(ch, ch, stride=2)
            if not last:
                skips.append(ch)
                res //= 2
            self.down.append(level)
        self.mid_block1 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.mid_attn = AttentionBlock(ch, groups)
        self.mid_block2 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(ResBlock(ch + skips.pop(), width * mult, temb_dim, groups, dropout))
                ch = width * mult
                level.attns.append(AttentionBlock(ch, groups) if res in attn_resolutions else nn.Identity())
            level.upsample = conv(ch, ch) if i != 0 else None
            if i != 0:
                res *= 2
            self.up.append(level)
        self.norm_out = group_norm(groups, ch)
        self.conv_out = conv(ch, image_channels, zero=True)

    def forward(self, x, steps):
        temb = self.temb_dense1(F.silu(self.temb_dense0(sinusoidal_embedding(steps, self.width))))
        temb = F.silu(temb)
        hs = [self.conv_in(x)]
        for level in self.down:
            for block, attn in zip(level.blocks, level.attns):
                hs.append(attn(block(hs[-1], temb)))
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))
        h = self.mid_block2(self.mid_attn(self.mid_block1(hs[-1], temb)), temb)
        for level in self.up:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb))
            if level.upsample is not None:
                h = level.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128, help="base width (paper: 128)")
    parser.add_argument("--channel-mult", default="1,2,2,2")
    parser.add_argument("--num-res-blocks", type=int, default=2)
    parser.add_argument("--attn", default="16", help="resolutions with attention, comma-separated")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls and convolutions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--gemm", default=None, metavar="M,K,N",
                        help="also time an (M x K) by (K x N) f32 matrix product (GFLOP/s)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    # PyTorch enables TF32 for cuDNN convolutions by default; set both explicitly.
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True

    model = UNet(
        args.width,
        [int(m) for m in args.channel_mult.split(",")],
        args.num_res_blocks,
        [int(r) for r in args.attn.split(",") if r],
        args.dropout,
        args.groups,
    ).to(device)
    params = sum(p.numel() for p in model.parameters())
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    # Synthetic uint8 images (the project's bench uses synthetic data too) and
    # the linear DDPM schedule, T = 1000, beta from 1e-4 to 0.02.
    images = torch.randint(0, 256, (max(args.batch, 1024), 3, 32, 32), dtype=torch.uint8, device=device)
    alpha_bar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, device=device, dtype=torch.float64), 0).float()

    def step():
        idx = torch.randint(0, images.shape[0], (args.batch,), device=device)
        x0 = images[idx].float() / 127.5 - 1.0
        flip = torch.rand(args.batch, device=device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(1, 1001, (args.batch,), device=device)
        ab = alpha_bar[t - 1][:, None, None, None]
        eps = torch.randn_like(x0)
        xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
        loss = F.mse_loss(model(xt, t - 1), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - 0.9999)
        return loss.item()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    ms = (time.perf_counter() - start) * 1000.0 / args.steps
    precision = "tf32" if args.tf32 and device.type == "cuda" else "f32"

    # The floating-point work of one step (forward and backward, as PyTorch's
    # flop counter sees it): the same network, so it is the project's too.
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    step_gflop = counter.get_total_flops() / 1e9

    gemm_gflops = None
    if args.gemm:
        m, k, n = (int(v) for v in args.gemm.split(","))
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        for _ in range(3):
            a @ b
        sync()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(5):
                a @ b
            sync()
            best = min(best, (time.perf_counter() - t0) / 5)
        gemm_gflops = 2.0 * m * k * n / best / 1e9
    if args.json:
        print(json.dumps({"params": params, "ms_per_step": ms, "device": str(device), "precision": precision,
                          "torch": torch.__version__, "batch": args.batch, "width": args.width,
                          "step_gflop": step_gflop, "gemm_gflops": gemm_gflops}))
    else:
        print(f"PyTorch {torch.__version__} on {device} ({precision}): {params} parameters, "
              f"batch {args.batch}: {ms:.1f} ms per training step (mean of {args.steps} after {args.warmup})")


if __name__ == "__main__":
    main()
