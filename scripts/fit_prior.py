"""Fit the built-in prior's Gaussian-mixture shape to measured calibration costs.

The prior (comfy_meancache/core/prior.py) prices edges on exact trajectories
of a Gaussian mixture. This script measures edge costs on real full-step runs
and picks the mixture (components, dimension, spread) whose costs rank the
edges most like the measured ones: the mean Spearman correlation of log costs
over all skipping edges (gap 2..8), for the meancache and meancache2
estimators. Data: the embedded flow model at 50 steps, cfg 1 and 4 (8 seeds
each), plus any saved profiles given with --profile (e.g. one recorded by
MeanCache Calibrate on the tiny Z-Image of the integration tests).

    python scripts/fit_prior.py [--profile FOLDER NAME ...]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from comfy_meancache.bench import full_runs, seeds_noise
from comfy_meancache.core.costs import trajectory_costs
from comfy_meancache.core.prior import MixturePrior, mixture_trajectories
from comfy_meancache.core.profile import Profile, Trajectory
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel import load_embedded_model

ESTIMATORS = ("meancache", "meancache2")
GRID = {"components": (4, 10, 32), "dim": (2, 4, 16, 64), "spread": (0.2, 0.3, 0.5, 0.8, 1.2, 2.0)}


def ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def skipping_edges(table: np.ndarray) -> np.ndarray:
    """Mask of finite, non-chain edges of a cost table [L, N, N]."""
    n = table.shape[-1]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.isfinite(table) & (table > 0) & (j - i >= 2)


def measured_runs(args) -> list[tuple[str, Trajectory]]:
    model = load_embedded_model()
    sigmas = flow_sigmas(50, 3.0)
    runs = []
    for cfg in (1.0, 4.0):
        noise, labels = seeds_noise(list(range(8)), model.latent_shape)
        runs.append((f"embedded cfg {cfg:g}", full_runs(model, sigmas, noise, labels, cfg)))
    for folder, name in zip(args.profile[::2], args.profile[1::2]):
        for k, run in enumerate(Profile.load(Path(folder), name).runs):
            runs.append((f"profile {name} run {k}", run))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="*", default=[], help="FOLDER NAME pairs of saved profiles")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = []
    for label, run in measured_runs(args):
        for estimator in ESTIMATORS:
            table = trajectory_costs(run.sigmas, run.velocities, run.states, estimator).band
            data.append((label, estimator, run.sigmas, table))
    results = []
    for components, dim, spread in itertools.product(*GRID.values()):
        prior = MixturePrior(components=components, dim=dim, spread=spread)
        scores = []
        for _, estimator, sigmas, measured in data:
            v, x = mixture_trajectories(sigmas, prior)
            predicted = trajectory_costs(sigmas, v, x, estimator).band
            mask = skipping_edges(measured) & skipping_edges(predicted)
            scores.append(spearman(np.log(predicted[mask]), np.log(measured[mask])))
        results.append((float(np.mean(scores)), components, dim, spread, scores))
    results.sort(reverse=True)
    default = MixturePrior()
    print("mean Spearman rho of log edge costs (prior vs measured); columns:", [f"{d[0]} / {d[1]}" for d in data])
    for score, components, dim, spread, per in results[:8]:
        print(
            f"  rho {score:.3f}  components {components:2d}  dim {dim:2d}  spread {spread:.1f}  "
            + " ".join(f"{p:.2f}" for p in per)
        )
    current = next(r for r in results if r[1:4] == (default.components, default.dim, default.spread))
    print(
        f"current default (components {default.components}, dim {default.dim}, spread {default.spread}): "
        f"rho {current[0]:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
