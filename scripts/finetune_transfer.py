"""Does a base model's learned profile plan a fine-tune's first run as well as the fine-tune's own?

Why: under the ``auto`` cost source another model of the same architecture (a
fine-tune, other LoRAs) that has nothing learned yet plans its first run from
the profile another model of that architecture learned under the same sampler
and cfg (comfyui/auto_profile.py). This measures that choice on the zoo: each
zoo architecture is fine-tuned for 300 steps on one class (a specialisation,
as a LoRA or a fine-tune makes); per setup (euler, dpmpp_2m, res_multistep at
cfg 1 and 4) and budget B of 50 steps, three cached runs of the base model
fill its profile and one cached run of the fine-tune fills the fine-tune's
own; the fine-tune is then sampled on held-out seeds as a first run with
nothing learned (even, then flat curvature below sigma 0.75), from the
base's profile and from its own, and scored by PSNR against its full run::

    python scripts/finetune_transfer.py --seeds 8

Prints the mean and worst difference to that first run, and how many cells
the base's profile loses more than 1 dB to it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from auto_transfer import SETUPS, gains_over_first_run, learned_profiles

from comfy_meancache.bench_zoo import BUDGETS, SHIFT, STEPS, seeds_batch
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel.train import fit_flow
from comfy_meancache.flowmodel.zoo import ARCHS, ZooModel, load_zoo_weights

FINE_TUNE = argparse.Namespace(steps=300, batch=32, lr=5e-4, warmup=20, ema=0.99)
FINE_TUNE_CLASS = 0


def fine_tune(name: str) -> ZooModel:
    """The zoo model trained on for a few hundred steps on one class only."""
    arch, base = ARCHS[name], load_zoo_weights(name)
    images, labels = arch.load_data()
    keep = labels == FINE_TUNE_CLASS
    net = base.net.train().requires_grad_(True)
    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    ema, _ = fit_flow(
        net, copy.deepcopy(net), images[keep], labels[keep], base.null_label, FINE_TUNE, generator, started
    )
    return ZooModel(ema.eval(), name, arch.decode, {"fine_tune": vars(FINE_TUNE)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="held-out seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    sigmas = flow_sigmas(STEPS, SHIFT)
    results: dict[str, list[float]] = {"base": [], "own": []}
    for name in ARCHS:
        base, tuned = load_zoo_weights(name), fine_tune(name)
        noise, labels = seeds_batch(tuned, list(range(1000, 1000 + args.seeds)))
        for budget in BUDGETS:
            profiles, own = learned_profiles(base, sigmas, budget), learned_profiles(tuned, sigmas, budget, runs=1)
            for setup in SETUPS:
                choices = {"base": profiles[setup], "own": own[setup]}
                for label, gain in gains_over_first_run(tuned, setup, sigmas, budget, noise, labels, choices).items():
                    results[label].append(gain)
        print(f"{name}: done", flush=True)
    for label, values in results.items():
        print(
            f"{label:4s} profile - first run: mean {statistics.mean(values):+.2f} dB, worst {min(values):+.2f} dB, "
            f"below it by > 1 dB in {sum(v < -1 for v in values)} of {len(values)} cells"
        )
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
