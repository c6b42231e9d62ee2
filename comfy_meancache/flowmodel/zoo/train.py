"""Train one zoo model (rectified flow, CPU, one thread, minutes).

Run from the repository root::

    python -m comfy_meancache.flowmodel.zoo.train --model photo-unet \
        --out comfy_meancache/flowmodel/zoo/photo-unet.safetensors

The loop, sigma sampling, label dropout, schedule, EMA and file format are
the digits model's (:func:`comfy_meancache.flowmodel.train.fit_flow` and
:func:`~comfy_meancache.flowmodel.train.save_trained`); only the data, the
network and the step budget differ. Data come from files installed with
scikit-learn and matplotlib (training/test-time dependencies only).

Per-model defaults (== the shipped runs) are sized so each run takes under
~6 minutes with one thread on the shared 2-core dev machine: the conv UNet
costs the most per sample, so it gets the fewest, smaller batches and a
higher learning rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..train import _reexec_with_passive_omp_wait, fit_flow, run_isolated, save_trained
from . import ARCHS

#: name -> (steps, batch, lr)
DEFAULTS: dict[str, tuple[int, int, float]] = {
    "photo-unet": (800, 32, 2e-3),
    "terrain-latent": (3000, 64, 1e-3),
    "mri-uvit": (2400, 32, 1e-3),
}
EVAL_SAMPLES = 2048


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(ARCHS))
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    ap.add_argument("--steps", type=int, help="default: per model (DEFAULTS)")
    ap.add_argument("--batch", type=int, help="default: per model (DEFAULTS)")
    ap.add_argument("--lr", type=float, help="default: per model (DEFAULTS)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-eval", action="store_true", help="skip the final whole-set loss (smoke tests)")
    args = ap.parse_args(argv)
    steps, batch, lr = DEFAULTS[args.model]
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr

    run_isolated(train, args)


def train(args: argparse.Namespace) -> None:
    """One run of ``args.model``; ``args`` as parsed by :func:`main`."""
    arch = ARCHS[args.model]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    x_all, y_all = arch.load_data()
    cfg = arch.config_cls()
    net = arch.net_cls(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{arch.name}: params={n_params} data={tuple(x_all.shape)} cfg={cfg.to_dict()}", flush=True)
    ema, train_loss = fit_flow(net, arch.net_cls(cfg), x_all, y_all, cfg.num_classes, args, gen, t_start)
    # The final EMA loss on an evenly strided subset of <= 2048 (the whole set, up to 33k
    # samples, would cost as much as the training itself for the same number).
    every = -(-x_all.shape[0] // EVAL_SAMPLES)
    x_eval, y_eval = x_all[::every], y_all[::every]
    extra = {"model": arch.name, "params": n_params, "data_samples": x_all.shape[0], "eval_samples": len(x_eval)}
    save_trained(ema, x_eval, y_eval, cfg.to_dict(), args, train_loss, t_start, extra)


if __name__ == "__main__":
    _reexec_with_passive_omp_wait(__spec__.name)
    main()
