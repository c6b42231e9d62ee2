"""Command line: ``python -m comfy_meancache plan | calibrate | demo | bench``."""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import replace
from pathlib import Path

from . import bench, demo
from .core.costs import even_costs
from .core.estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from .core.planner import plan
from .core.profile import Profile
from .core.schedule import MEASURED_WARMUP, PlannerSettings
from .core.sigmas import SCHEDULERS, flow_sigmas


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    parser.add_argument("--shift", type=float, default=3.0, help="model sampling shift (Z-Image: 3)")
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="simple")
    parser.add_argument("--denoise", type=float, default=1.0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--compute-steps", type=int, help="model calls to spend")
    budget.add_argument("--speedup", type=float, help="target speedup instead of compute steps (default 2.5)")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=DEFAULT_ESTIMATOR)
    parser.add_argument(
        "--costs", choices=("even", "prior"), default="even", help="built-in costs without --profile (default even)"
    )
    defaults = PlannerSettings()
    parser.add_argument("--gamma", type=float, default=defaults.gamma, help="peak suppression power")
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"leading steps always computed (default {defaults.warmup}; {MEASURED_WARMUP} with --profile)",
    )
    parser.add_argument("--max-gap", type=int, default=defaults.max_gap, help="longest edge in steps")
    parser.add_argument("--max-span", type=int, default=defaults.max_span, help="largest meancache span K")
    parser.add_argument("--json", action="store_true", help="print the schedule as JSON")
    parser.add_argument("--profile", type=Path, help="plan from a calibration profile (its .json file)")


def _plan(args: argparse.Namespace) -> int:
    sigmas = flow_sigmas(args.steps, args.shift, args.scheduler, args.denoise)
    settings = PlannerSettings(gamma=args.gamma, max_gap=args.max_gap, max_span=args.max_span)
    if args.profile is not None:
        settings = settings.for_measured_costs()
    if args.warmup is not None:
        settings = replace(settings, warmup=args.warmup)
    speedup = args.speedup if args.compute_steps is None and args.speedup is not None else None
    if args.compute_steps is None and speedup is None:
        speedup = 2.5
    costs = None  # the prior
    if args.profile is not None:
        profile = Profile.load(args.profile.parent, args.profile.stem)
        costs = profile.costs(sigmas, args.estimator, settings.max_span, settings.max_gap)
    elif args.costs == "even":
        costs = even_costs(args.steps, args.estimator, settings.max_span, settings.max_gap)
    schedule = plan(
        sigmas,
        compute_steps=args.compute_steps,
        speedup=speedup,
        estimator=args.estimator,
        settings=settings,
        costs=costs,
    )
    if args.json:
        print(schedule.to_json(indent=1))
    else:
        print(schedule.summary())
        print("computed steps:", " ".join(map(str, schedule.computed_steps)))
        for note in schedule.notes:
            print("note:", note)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """Full-step runs of the embedded model added to a profile (runs average in)."""
    from .bench import SHIFT, full_runs, seeds_noise
    from .flowmodel import load_embedded_model

    model = load_embedded_model()
    sigmas = flow_sigmas(args.steps, SHIFT, args.scheduler)
    noise, labels = seeds_noise(list(range(args.first_seed, args.first_seed + args.seeds)), model.latent_shape)
    folder, name = args.profile.parent, args.profile.stem
    existing = (folder / f"{name}.json").exists()
    profile = Profile.load(folder, name) if existing else Profile(name)
    profile.add(full_runs(model, sigmas, noise, labels, args.cfg))
    profile.metadata = {
        "model": "embedded flow model",
        "shift": SHIFT,
        "sampler": "euler",
        "scheduler": args.scheduler,
        "steps": args.steps,
        "cfg": args.cfg,
        "runs": len(profile.runs),
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = profile.save(folder)
    print(f"{path}: {len(profile.runs)} runs ({args.seeds} seeds each, {args.steps} steps, cfg {args.cfg:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_meancache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plan_parser = commands.add_parser("plan", help="plan a compute/skip schedule with PSSP")
    _add_plan_arguments(plan_parser)
    plan_parser.set_defaults(run=_plan)
    calibrate_parser = commands.add_parser("calibrate", help="record a calibration profile on the embedded model")
    calibrate_parser.add_argument("--profile", type=Path, default=Path("embedded.json"), help="profile .json to write")
    calibrate_parser.add_argument("--steps", type=int, default=50)
    calibrate_parser.add_argument("--scheduler", choices=SCHEDULERS, default="simple")
    calibrate_parser.add_argument("--cfg", type=float, default=4.0)
    calibrate_parser.add_argument("--seeds", type=int, default=4, help="seeds per run (one batch)")
    calibrate_parser.add_argument("--first-seed", type=int, default=0)
    calibrate_parser.set_defaults(run=_calibrate)
    for module in (demo, bench):
        module.register(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
