"""Costs learned from a model's own cached runs: the observations, the costs, and two runs in a row."""

import numpy as np
import pytest
import torch
from exact_flow import Field, noise

from comfy_meancache.core.costs import even_costs
from comfy_meancache.core.learning import (
    FIRST_RUN_EVEN_ABOVE,
    MAX_FILE_BYTES,
    MAX_OBSERVATIONS,
    Observations,
    first_run_plan,
    learned_costs,
    load_learned,
    one_step_errors,
    save_learned,
)
from comfy_meancache.core.planner import plan, replan_rest
from comfy_meancache.core.runtime import cached_denoiser
from comfy_meancache.core.schedule import MEASURED_WARMUP, PlannerSettings
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.core.stepper import Action
from comfy_meancache.samplers import sample_dpmpp_2m, sample_euler

SIGMAS = flow_sigmas(30)


def test_curvature_and_slope_of_a_quadratic_field_are_exact():
    c = torch.tensor([0.5, -2.0], dtype=torch.float64)
    v = {m: c * SIGMAS[m] ** 2 for m in (3, 5, 8)}
    curvature, slope = one_step_errors(SIGMAS, 3, 5, 8, v[3], v[5], v[8]).tolist()
    assert curvature == pytest.approx(2 * float(c.abs().mean()), rel=1e-5)  # |v''| = 2|c|
    assert slope == pytest.approx(float(c.abs().mean()) * (SIGMAS[5] + SIGMAS[8]), rel=1e-5)


def test_costs_follow_the_formula_for_constant_curvature():
    observations = Observations([0.2, 0.9], [3.0, 3.0], [0.5, 0.5])
    costs = learned_costs(SIGMAS, observations, max_gap=4)
    s, h = np.asarray(SIGMAS), np.abs(np.diff(SIGMAS))
    a, back, d = 10, 3, 4  # edge 10 -> 14 after a call at step 7
    expected = sum(h[m] * 1.5 * abs((s[m] - s[a]) * (s[m] - s[a - back])) for m in range(a + 1, a + d))
    assert costs.band[back, a, d] == pytest.approx(expected, rel=1e-12)
    first = sum(h[m] * 0.5 * abs(s[m] - s[0]) for m in (1, 2))
    assert costs.band[0, 0, 3] == pytest.approx(first, rel=1e-12) and np.isinf(costs.band[0, 5, 2])
    assert costs.band.shape == (5, 30, 5) and costs.pair_state and "2 observations" in costs.source
    with pytest.raises(ValueError, match="no observations"):
        learned_costs(SIGMAS, Observations())


def test_observations_are_bounded_validated_and_round_trip():
    observations = Observations()
    for k in range(MAX_OBSERVATIONS + 10):
        observations.add(0.5, 1.0 + k, 2.0)
    observations.add(0.4, float("nan"), 1.0)  # no information: dropped
    observations.add(0.4, 0.0, 1.0)
    assert len(observations) == MAX_OBSERVATIONS and observations.curvature[0] == 11.0
    assert Observations.from_dict(observations.to_dict()) == observations
    for bad in ({"sigma": None}, {"sigma": [1.0], "curvature": []}, {"sigma": ["x"]}):
        with pytest.raises(ValueError, match="malformed observations"):
            Observations.from_dict({"curvature": [1.0], "slope": [1.0]} | bad)


def test_a_second_run_plans_from_what_the_first_showed():
    learned = Observations()
    first = cached_denoiser(Field(), SIGMAS, compute_steps=12, learn=learned)
    sample_dpmpp_2m(first, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    assert first.schedule.settings.cost_source.startswith("even") and len(learned) == 0  # added when it ends
    assert first.stats.model_calls == 12 and len(learned) == 12 - 2
    field = Field()
    second = cached_denoiser(field, SIGMAS, compute_steps=12, learn=learned)
    sample_dpmpp_2m(second, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    assert second.schedule.settings.cost_source == "learned (10 observations)"
    assert field.calls == second.stats.model_calls == 12 and len(learned) == 20
    with pytest.raises(ValueError, match="learned costs are for meancache2"):
        cached_denoiser(Field(), SIGMAS, compute_steps=12, estimator="reuse", learn=learned)


def test_a_first_run_plans_evenly_at_high_noise_then_for_flat_curvature():
    field, learned = Field(), Observations()
    first = cached_denoiser(field, SIGMAS, compute_steps=12, learn=learned)
    sample_dpmpp_2m(first, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    even = plan(SIGMAS, compute_steps=12, costs=even_costs(len(SIGMAS) - 1, "meancache2"))
    ran = tuple(r.step for r in first.stats.records if r.action is Action.COMPUTE)
    assert first.schedule == first_run_plan(even) and ran == first.schedule.computed_steps != even.computed_steps
    assert field.calls == first.stats.model_calls == 12 and len(learned) == 10
    at = next(k for k, step in enumerate(even.computed_steps) if SIGMAS[step] <= FIRST_RUN_EVEN_ABOVE)
    assert ran[: at + 1] == even.computed_steps[: at + 1]  # even through the first call at sigma <= 0.75
    for level in (1e-3, 1.0, 1e3):  # what a run would re-plan from its own observations: the level cancels
        flat = learned_costs(SIGMAS, Observations([0.5], [level], [level]), even.settings.max_gap)
        assert replan_rest(even, flat, list(ran[: at + 1])).computed_steps == ran
    assert first.schedule.settings.cost_source == f"even, flat curvature from step {ran[at]}"
    assert first.schedule.notes[-1].startswith("first run: even while sigma > 0.75")
    kept = [  # a plan from learned costs, another estimator, every step computed
        cached_denoiser(Field(), SIGMAS, compute_steps=12, learn=learned).schedule,
        plan(SIGMAS, compute_steps=12, estimator="reuse", costs=even_costs(len(SIGMAS) - 1, "reuse")),
        plan(SIGMAS, compute_steps=len(SIGMAS) - 1, costs=even_costs(len(SIGMAS) - 1, "meancache2")),
    ]
    assert all(first_run_plan(schedule) is schedule for schedule in kept[1:])
    assert kept[0].settings.cost_source.startswith("learned")
    assert cached_denoiser(Field(), SIGMAS, compute_steps=12).schedule == even  # no learning: plain even


def test_a_learned_plan_forces_only_step_0_of_the_warm_up_unless_settings_are_given():
    learned = Observations()
    first = cached_denoiser(Field(), SIGMAS, compute_steps=8, learn=learned)
    sample_euler(first, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    first.finish()
    second = cached_denoiser(Field(), SIGMAS, compute_steps=8, learn=learned)
    assert first.schedule.settings.warmup == 3 and second.schedule.settings.warmup == MEASURED_WARMUP == 1
    costs = learned_costs(SIGMAS, learned)
    assert (
        second.schedule.computed_steps
        == plan(SIGMAS, compute_steps=8, settings=PlannerSettings(warmup=1), costs=costs).computed_steps
    )
    assert second.schedule.computed_steps[:3] != (0, 1, 2)  # the learned costs chose to skip in the first steps
    kept = cached_denoiser(Field(), SIGMAS, compute_steps=8, learn=learned, settings=PlannerSettings(warmup=3))
    assert kept.schedule.settings.warmup == 3 and kept.schedule.computed_steps[:3] == (0, 1, 2)


def test_a_full_learned_profile_stays_under_a_megabyte_and_round_trips(tmp_path):
    observations = Observations()
    rng = np.random.default_rng(0)
    for sigma, curvature, slope in rng.uniform(1e-9, 1e9, size=(MAX_OBSERVATIONS + 100, 3)):
        observations.add(-sigma * np.pi / 1e9 + 4, curvature * np.e, slope / np.e)  # long decimals everywhere
    path = tmp_path / "auto" / "model.json"
    size = save_learned(path, observations, {"model": "X", "runs": 7})
    assert size == path.stat().st_size < MAX_FILE_BYTES / 2 and len(observations) == MAX_OBSERVATIONS
    loaded, metadata = load_learned(path)
    assert metadata == {"model": "X", "runs": 7} and len(loaded) == MAX_OBSERVATIONS
    np.testing.assert_allclose(loaded.curvature, observations.curvature, rtol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]  # no temporary file left


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{ not json", "Expecting"),
        ("[]", "not a learned MeanCache profile"),
        ('{"format": "comfy-meancache-learned", "version": 9}', "version 9"),
        ('{"format": "comfy-meancache-learned", "version": 1, "metadata": {}}', "malformed observations"),
        ('{"format": "comfy-meancache-learned", "version": 1, "metadata": [], "sigma": []}', "metadata must be"),
        (" " * (MAX_FILE_BYTES + 1), "larger than"),
        (b"\xff\xfe", "codec"),
        ("[" * 100_000, "recursion"),
    ],
)
def test_an_unusable_learned_profile_is_a_value_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "model.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=problem) as raised:
        load_learned(path)
    assert str(path) in str(raised.value)
    with pytest.raises(FileNotFoundError):
        load_learned(tmp_path / "missing.json")


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    observations = Observations()
    observations.add(0.5, 1.0, 2.0)
    save_learned(path, observations, {"runs": 1})
    before = path.read_text()

    def interrupted(source, target):
        raise OSError("disk full")

    monkeypatch.setattr("comfy_meancache.core.learning.os.replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        save_learned(path, observations, {"runs": 2})
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_a_grid_that_repeats_a_sigma_learns_what_it_can_and_never_divides_by_zero():
    sigmas = [1.0, 0.9, 0.8, 0.8, 0.6, 0.4, 0.2, 0.0]  # as some schedulers give at few steps
    learned = Observations()
    cached = cached_denoiser(Field(), sigmas, compute_steps=7, learn=learned)
    out = sample_euler(cached, noise(), torch.tensor(sigmas, dtype=torch.float64))  # dpmpp_2m divides by h = 0
    assert torch.isfinite(out).all() and cached.stats.model_calls == 7
    assert 0 < len(learned) < 7 - 2 and 0.8 in learned.sigma and all(np.isfinite(learned.curvature))


def test_coverage_is_the_share_of_a_runs_sigma_span_that_was_observed():
    observed = Observations()
    for sigma in (0.9, 0.5, 0.2):
        observed.add(sigma, 1.0, 1.0)
    assert observed.coverage([1.0, 0.6, 0.2, 0.0]) == pytest.approx(0.7 / 0.8)
    assert observed.coverage([0.5, 0.4, 0.3]) == 1.0
    assert observed.coverage([0.15, 0.1, 0.0]) == 0.0  # another part of the schedule (the other expert)
    assert Observations().coverage([1.0, 0.5, 0.0]) == 0.0 and observed.coverage([1.0, 0.0]) == 0.0
