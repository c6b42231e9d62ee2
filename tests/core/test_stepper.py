"""Stepper: exact equivalence, model-call counts, memory release, fallbacks."""

import gc
import weakref

import torch
from torch.overrides import TorchFunctionMode

from comfy_meancache.core.euler import sample_euler
from comfy_meancache.core.planner import plan
from comfy_meancache.core.schedule import Schedule, meancache2_spans
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.core.stepper import Action, Stepper


def curved_velocity(x, sigma):
    return torch.sin(3 * x) * (1 + sigma) - x * sigma**2


def counting(velocity):
    calls = []

    def wrapped(x, sigma):
        calls.append(sigma)
        return velocity(x, sigma)

    return wrapped, calls


def test_all_compute_is_bit_identical_to_plain_euler():
    sigmas = flow_sigmas(30)
    n = len(sigmas) - 1
    schedule = Schedule(sigmas, [True] * n, [0] * n, "meancache", budget=n)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    plain, _ = sample_euler(curved_velocity, x, sigmas)
    cached, stats = sample_euler(curved_velocity, x, sigmas, Stepper(schedule))
    assert torch.equal(plain, cached)
    assert stats.model_calls == n and stats.skipped == 0


def test_model_calls_equal_budget_for_every_estimator():
    sigmas = flow_sigmas(40)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for estimator in ("meancache", "meancache2", "reuse"):
        schedule = plan(sigmas, compute_steps=14, estimator=estimator)
        velocity, calls = counting(curved_velocity)
        out, stats = sample_euler(velocity, x, sigmas, Stepper(schedule))
        assert len(calls) == 14 == stats.model_calls == schedule.model_calls
        assert stats.skipped == 26 and not stats.fallbacks
        assert [r.action for r in stats.records] == [Action.COMPUTE if c else Action.SKIP for c in schedule.compute]
        assert torch.isfinite(out).all()


def test_no_tensors_kept_after_finish():
    sigmas = flow_sigmas(20)
    schedule = plan(sigmas, compute_steps=8, estimator="meancache")
    stepper = Stepper(schedule)
    refs = []

    def velocity(x, sigma):
        v = curved_velocity(x, sigma)
        refs.append(weakref.ref(v))
        return v

    x = torch.randn(1, 4, 8, 8)
    out, stats = sample_euler(velocity, x, sigmas, stepper)
    del out
    gc.collect()
    assert all(r() is None for r in refs)
    assert not stepper._velocities and not stepper._computed
    assert all(isinstance(r.sigma, float) for r in stats.records)


def test_history_stays_bounded():
    sigmas = flow_sigmas(50)
    schedule = plan(sigmas, compute_steps=20, estimator="meancache")
    stepper = Stepper(schedule)
    peak = 0

    def velocity(x, sigma):
        nonlocal peak
        peak = max(peak, len(stepper._velocities))
        return curved_velocity(x, sigma)

    sample_euler(velocity, torch.zeros(1, 2, 4, 4), sigmas, stepper)
    assert peak <= schedule.history_window + 2


def test_planned_skip_without_history_is_computed_with_a_reason():
    sigmas = flow_sigmas(10)
    compute = [True, True, False, False, True, False, False, False, False, True]
    schedule = Schedule(sigmas, compute, [0, 0, 2, 1, 0, 1, 1, 1, 1, 0], "meancache", budget=4)
    stepper = Stepper(schedule)
    x = torch.zeros(1, 3)
    assert stepper.decide(2, x) is Action.COMPUTE  # run joined at step 2: nothing to estimate from
    stepper.record(2, torch.ones(1, 3))
    assert stepper.decide(3, x) is Action.SKIP
    stepper.estimate(3)
    assert stepper.decide(4, torch.zeros(2, 3)) is Action.COMPUTE  # batch changed: history dropped
    stats = stepper.finish()
    assert stats.fallbacks[0].step == 2 and "no computed step" in stats.fallbacks[0].reason
    assert "shape" in stats.records[-1].reason


def test_summary_line():
    sigmas = flow_sigmas(50)
    schedule = plan(sigmas, compute_steps=20)
    _, stats = sample_euler(curved_velocity, torch.zeros(1, 4), sigmas, Stepper(schedule))
    assert stats.summary().startswith("50 steps -> 20 model calls (2.50x), 30 skipped, ")
    computed = [r for r in stats.records if r.action is Action.COMPUTE]
    assert all(r.wall_s is not None and r.wall_s >= 0 for r in computed)


def test_nan_velocity_is_never_estimated_from():
    sigmas = flow_sigmas(20)
    schedule = plan(sigmas, compute_steps=8, estimator="meancache")
    poisoned = schedule.computed_steps[3]

    def velocity(x, sigma):
        v = curved_velocity(x, sigma)
        return v * float("nan") if sigma == sigmas[poisoned] else v

    out, stats = sample_euler(velocity, torch.ones(1, 4), sigmas, Stepper(schedule))
    by_step = {r.step: r for r in stats.records}
    assert by_step[poisoned].nonfinite
    after = poisoned + 1
    assert not schedule.compute[after] and by_step[after].action is Action.COMPUTE
    assert "NaN or inf" in by_step[after].reason
    assert "NaN/inf from the model at step(s)" in stats.summary()


def test_cache_device_gives_the_same_result():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sigmas = flow_sigmas(30)
    schedule = plan(sigmas, compute_steps=12, estimator="meancache")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    reference, _ = sample_euler(curved_velocity, x, sigmas, Stepper(schedule))
    for device in devices:
        stepper = Stepper(schedule, cache_device="cpu")
        moved, _ = sample_euler(curved_velocity, x.to(device), sigmas, stepper)
        assert moved.device.type == device
        torch.testing.assert_close(moved.cpu(), reference, rtol=1e-5, atol=1e-5)


def test_summary_counts_the_samplers_extra_evaluations():
    """Heun/dpm_2 at 30 steps: 29 extra evaluations always call the model, so 12 computed steps are 41 calls."""
    sigmas = flow_sigmas(30)
    _, stats = sample_euler(curved_velocity, torch.zeros(1, 4), sigmas, Stepper(plan(sigmas, compute_steps=12)))
    stats.extra_evaluations = 29
    assert (stats.evaluations, stats.uncached_evaluations, stats.speedup) == (41, 59, 59 / 41)
    assert stats.summary().startswith("30 steps + 29 extra evaluations -> 41 model calls (59 uncached, 1.44x), ")


class ToCalls(TorchFunctionMode):
    """Records the arguments of every ``Tensor.to`` call to a device (dtype casts left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and any(isinstance(a, torch.device) for a in args[1:]):
            self.calls.append((args[1:], kwargs))
        return func(*args, **kwargs)


def test_copies_to_the_cache_device_block_until_the_host_can_read_them():
    """A non_blocking device-to-host copy may still be in flight when the host reads it (CUDA)."""
    sigmas = flow_sigmas(6)
    compute = [True, True, False, True, True, True]
    schedule = Schedule(sigmas, compute, meancache2_spans(compute), "meancache2", budget=5)
    stepper = Stepper(schedule, cache_device="cpu")
    x = torch.ones(1, 4)
    for step in (0, 1):
        stepper.decide(step, x)
        with ToCalls() as record:
            stepper.record(step, curved_velocity(x, sigmas[step]))
        assert record.calls == [((torch.device("cpu"),), {})]
    stepper.decide(2, x)
    with ToCalls() as estimate:
        stepper.estimate(2)
    # host to device may overlap: the stepper never writes the CPU estimate it copies from
    assert estimate.calls == [((torch.device("cpu"),), {"non_blocking": True})]


def test_history_bytes_is_the_peak_of_the_kept_velocities():
    """meancache2 keeps the last two computed velocities plus the current estimate: 3 latents at the peak.
    reuse hands out the cached velocity itself for a skip (no copy), and the older computed one stays until
    the next computed step: 2 latents. A run computing every step keeps the last 2 computed velocities."""
    sigmas = flow_sigmas(20)
    latent = torch.zeros(2, 16, 3, 8, 8, dtype=torch.bfloat16)
    one = latent.numel() * latent.element_size()  # 12 KiB
    every_step = Schedule(sigmas, [True] * 20, [0] * 20, "meancache2", 20)
    for schedule, latents in [
        (plan(sigmas, compute_steps=8, estimator="meancache2"), 3),
        (plan(sigmas, compute_steps=8, estimator="reuse"), 2),
        (every_step, 2),
    ]:
        _, stats = sample_euler(lambda x, s: torch.ones_like(x), latent, sigmas, Stepper(schedule))
        assert stats.history_bytes == latents * one, schedule.estimator
    _, stats = sample_euler(lambda x, s: torch.ones_like(x), latent, sigmas, Stepper(plan(sigmas, compute_steps=8)))
    assert stats.summary().endswith(" s, history 36.0 KiB peak")
