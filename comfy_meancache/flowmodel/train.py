"""Train the embedded digits flow model (rectified flow, CPU, minutes).

Run from the repository root::

    python -m comfy_meancache.flowmodel.train --out comfy_meancache/flowmodel/weights.safetensors

Needs scikit-learn (for its bundled ``load_digits``); that is a training-time
dependency only, the shipped weights load without it. Everything is seeded,
so re-running reproduces the same run up to float non-determinism of the CPU
BLAS. See ``comfy_meancache/flowmodel/__init__.py`` for the measured numbers
of the shipped run.

Hyper-parameters (defaults == the shipped run) and why:

* data: 1797 digits, 8x8 -> 16x16 bilinear, [0, 16] -> [-1, 1]; no
  augmentation (digits are orientation-sensitive and the set is only a demo).
* objective: rectified flow, ``x_s = s*eps + (1-s)*x0``, MSE to ``v = eps - x0``.
* sigma: stratified ``t ~ U(0, 1)``; 2/3 of a batch uses ``sigma = shift(t, 3)``
  (the density of Z-Image's shift-3 sampling grid, so sampled sigmas get the
  most training signal), 1/3 uses ``sigma = t`` so low-noise levels are
  covered as well.
* labels dropped to the null label (10) with p = 0.1 for classifier-free guidance.
* AdamW lr 1e-3 (betas 0.9/0.99, no weight decay), 100 warm-up steps,
  cosine decay to 5 % ; batch 128; gradient clip 1.0; EMA 0.999 of the
  weights (the EMA weights are shipped, stored as fp16 to halve the file).
* 2400 steps (~170 epochs); ~0.15 s/step with 2 threads on an idle 2-core CPU.
* the script restarts itself once with ``OMP_WAIT_POLICY=PASSIVE`` (see
  :func:`_reexec_with_passive_omp_wait`); set the variable yourself to skip that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .model import FlowModelConfig, TinyDiT

NULL_DROP_P = 0.1
SHIFT = 3.0


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """ComfyUI's flow shift: ``sigma = shift*t / (1 + (shift-1)*t)``."""
    return shift * t / (1 + (shift - 1) * t)


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits as [N, 1, 16, 16] in [-1, 1] plus int64 labels."""
    from sklearn.datasets import load_digits  # training/test-time only

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x * 2 - 1, torch.tensor(d.target, dtype=torch.long)


def sample_sigmas(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Stratified t, then a 2:1 mix of shift-3 sigmas and uniform sigmas."""
    t = (torch.arange(batch) + torch.rand(batch, generator=gen)) / batch
    t = t[torch.randperm(batch, generator=gen)]
    shifted = torch.rand(batch, generator=gen) < 2 / 3
    return torch.where(shifted, time_snr_shift(SHIFT, t), t)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def eval_loss(net: nn.Module, x0: torch.Tensor, y: torch.Tensor, seed: int = 1234) -> float:
    """Deterministic loss on the whole set over a fixed grid of 8 sigmas
    (conditional labels), for reporting a number that is not batch noise."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    grid = torch.linspace(0.05, 0.95, 8)
    for s in grid:
        eps = torch.randn(x0.shape, generator=g)
        sv = torch.full((x0.shape[0],), float(s))
        xs = s * eps + (1 - s) * x0
        total += F.mse_loss(net(xs, sv, y), eps - x0).item()
    return total / len(grid)


def _reexec_with_passive_omp_wait(module: str = __spec__.name) -> None:
    """Restart once with ``OMP_WAIT_POLICY=PASSIVE`` (read only at OpenMP
    start-up, and torch is already imported by the package at this point).

    Why: with torch's default spinning OpenMP workers, two threads on a
    2-core machine that anything else is also using slow down ~10x (measured
    2.5 s vs 0.17-0.27 s per step), because a spinning worker holds its core
    while waiting for its descheduled sibling. Passive waiting costs nothing
    when the machine is idle.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true", help="skip the final whole-set loss (smoke tests)")
    ap.add_argument("--patch-size", type=int, default=FlowModelConfig.patch_size)
    ap.add_argument("--dim", type=int, default=FlowModelConfig.dim)
    ap.add_argument("--depth", type=int, default=FlowModelConfig.depth)
    ap.add_argument("--heads", type=int, default=FlowModelConfig.heads)
    ap.add_argument("--stem-kernel", type=int, default=FlowModelConfig.stem_kernel)
    ap.add_argument("--head-channels", type=int, default=FlowModelConfig.head_channels)
    args = ap.parse_args(argv)

    # Process-wide torch settings are restored afterwards, so main() can be
    # called from tests or notebooks without side effects.
    run_isolated(train, args)


def run_isolated(run, args: argparse.Namespace) -> None:
    """``run(args)`` with ``args.threads`` torch threads, denormals flushed and the global RNG restored after.

    Adam's second-moment state of near-zero gradients (zero-initialised
    layers) underflows into denormals, which are very slow on x86.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng():
            run(args)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(prev_threads)


def train(args: argparse.Namespace) -> None:
    """The training run itself; ``args`` as parsed by :func:`main`."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    x_all, y_all = load_digits_16()
    cfg = FlowModelConfig(
        patch_size=args.patch_size,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        stem_kernel=args.stem_kernel,
        head_channels=args.head_channels,
    )
    net = TinyDiT(cfg)
    print(
        f"params={sum(p.numel() for p in net.parameters())} data={tuple(x_all.shape)} cfg={cfg.to_dict()}", flush=True
    )
    ema, train_loss = fit_flow(net, TinyDiT(cfg), x_all, y_all, cfg.num_classes, args, gen, t_start)
    save_trained(ema, x_all, y_all, cfg.to_dict(), args, train_loss, t_start)


def fit_flow(
    net: nn.Module,
    ema: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    null_label: int,
    args: argparse.Namespace,
    gen: torch.Generator,
    t_start: float,
) -> tuple[nn.Module, float]:
    """Rectified-flow training loop shared by every embedded model (digits and
    the zoo), so they all learn under the same objective, sigma mix, label
    dropout, schedule and EMA. ``ema`` is a second instance of ``net``'s class;
    returns it (EMA weights) and the mean loss of the last 200 steps."""
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    n = x_all.shape[0]
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    perm, pos = torch.randperm(n, generator=gen), 0
    recent: list[float] = []
    for step in range(args.steps):
        if pos + args.batch > n:  # epoch-style shuffling without replacement
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(len(y), generator=gen) < NULL_DROP_P] = null_label

        sigma = sample_sigmas(len(idx), gen)
        eps = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        xs = s * eps + (1 - s) * x0
        loss = F.mse_loss(net(xs, sigma, y), eps - x0)

        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)

        recent = (recent + [loss.item()])[-200:]
        if step % 200 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_start
            print(f"step {step:5d} loss(avg200) {sum(recent) / len(recent):.4f} {el:6.1f}s", flush=True)
    return ema, sum(recent) / len(recent)


def save_trained(
    ema: nn.Module,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    config: dict,
    args: argparse.Namespace,
    train_loss: float,
    t_start: float,
    extra: dict | None = None,
) -> None:
    """Evaluate the EMA weights on ``x_eval`` (:func:`eval_loss`) and write
    them as fp16 safetensors with the architecture ``config`` and the training
    record in the metadata (the loaders read both from there, so nothing is
    hard-coded twice)."""
    ema_eval = None if args.no_eval else eval_loss(ema, x_eval, y_eval)
    wall = time.perf_counter() - t_start
    eval_txt = "skipped" if ema_eval is None else f"{ema_eval:.4f}"
    print(
        f"final train loss (mean of the last <= 200 steps) {train_loss:.4f}; "
        f"EMA eval loss {eval_txt}; wall {wall:.1f}s",
        flush=True,
    )

    meta = {
        "config": json.dumps(config),
        "training": json.dumps(
            {
                **(extra or {}),
                "seed": args.seed,
                "steps": args.steps,
                "batch": args.batch,
                "lr": args.lr,
                "warmup": args.warmup,
                "ema": args.ema,
                "null_drop_p": NULL_DROP_P,
                "sigma_shift": SHIFT,
                "final_train_loss": round(train_loss, 5),
                "ema_eval_loss": None if ema_eval is None else round(ema_eval, 5),
                "wall_s": round(wall, 1),
                "threads": args.threads,
                "torch": torch.__version__,
            }
        ),
        "stored_dtype": "float16",
    }
    # fp16 storage halves the file; the loader upcasts (rounding is ~1e-3
    # relative, far below what changes samples).
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in ema.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    _reexec_with_passive_omp_wait()
    main()
