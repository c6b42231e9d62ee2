"""Fit the built-in prior's Gaussian-mixture shape to measured calibration costs (:func:`core.prior.fit_prior`).

Data: the embedded flow model at 50 steps, cfg 1 and 4 (8 seeds each), plus
any saved profiles given with --profile (e.g. one recorded by MeanCache
Calibrate on the tiny Z-Image of the integration tests).

    python scripts/fit_prior.py [--profile FOLDER NAME ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from comfy_meancache.bench import full_runs, seeds_noise
from comfy_meancache.core.prior import MixturePrior, fit_prior
from comfy_meancache.core.profile import Profile
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel import load_embedded_model


def measured_runs(args) -> list:
    model = load_embedded_model()
    sigmas = flow_sigmas(50, 3.0)
    runs = []
    for cfg in (1.0, 4.0):
        noise, labels = seeds_noise(list(range(8)), model.latent_shape)
        runs.append(full_runs(model, sigmas, noise, labels, cfg))
    for folder, name in zip(args.profile[::2], args.profile[1::2]):
        runs.extend(Profile.load(Path(folder), name).runs)
    return [(run.sigmas, run.velocities, run.states) for run in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="*", default=[], help="FOLDER NAME pairs of saved profiles")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ranked = fit_prior(measured_runs(args))
    print("mean Spearman rho of log edge costs (prior vs measured), best first:")
    for score, prior in ranked[:8]:
        print(f"  rho {score:.3f}  components {prior.components:2d}  dim {prior.dim:2d}  spread {prior.spread:.1f}")
    default = MixturePrior()
    current = next(score for score, prior in ranked if prior == default)
    print(f"current default ({default}): rho {current:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
