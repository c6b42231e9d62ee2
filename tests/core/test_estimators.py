"""Estimators against hand-computed values and exact properties."""

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from comfy_meancache.core.estimators import (
    combine,
    estimator_weights,
    meancache2_weights,
    meancache_weights,
    reuse_weights,
)
from comfy_meancache.core.euler import sample_euler
from comfy_meancache.core.schedule import Schedule, meancache2_spans
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.core.stepper import Stepper

DEVICES = (
    ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if torch.backends.mps.is_available() else [])
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def apply(weights, values):
    return sum(w * values[m] for m, w in weights.items())


def test_meancache_by_hand():
    sigmas = [1.0, 0.9, 0.7, 0.4, 0.2, 0.0]
    # step 3, span 2: window steps 1..2, d = s3 - s1 = -0.5, h1 = -0.2, h2 = -0.3, h3 = -0.2
    # u_bar = 0.4 v1 + 0.6 v2; J = (v1 - u_bar) / -0.5; v_hat = v2 - J * -0.2 = v2 - 0.4 (v1 - u_bar)
    w = meancache_weights(sigmas, 3, 2)
    assert w == pytest.approx({1: -0.4 + 0.4 * 0.4, 2: 1.0 + 0.4 * 0.6})
    v = {1: 3.0, 2: 5.0}
    u_bar = 0.4 * 3.0 + 0.6 * 5.0
    assert apply(w, v) == pytest.approx(5.0 - ((3.0 - u_bar) / -0.5) * -0.2)


def test_meancache_official_form_through_states():
    """The weights equal the official update written with sampler states x."""
    sigmas = [1.0, 0.93, 0.8, 0.66, 0.5, 0.31, 0.1, 0.0]
    v = {m: float(m * m - 3 * m + 1) for m in range(7)}
    x = {0: 0.5}
    for m in range(6):
        x[m + 1] = x[m] + (sigmas[m + 1] - sigmas[m]) * v[m]
    for step in range(1, 6):
        for k in range(1, 6):
            kk = min(k, step)
            u_bar = (x[step] - x[step - kk]) / (sigmas[step] - sigmas[step - kk])
            jvp = (v[step - kk] - u_bar) / (sigmas[step] - sigmas[step - kk])
            official = v[step - 1] - jvp * (sigmas[step + 1] - sigmas[step])
            assert apply(meancache_weights(sigmas, step, k), v) == pytest.approx(official)


def test_span_one_is_reuse_of_previous_velocity():
    sigmas = flow_sigmas(10)
    for step in range(1, 10):
        assert meancache_weights(sigmas, step, 1) == {step - 1: 1.0}


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_damped_response_to_linear_velocity(k):
    """Per-step change D on a uniform grid: the update adds (k-1)/(2k) * D to v_{i-1}."""
    sigmas = [1 - i / 20 for i in range(21)]
    d = 0.37
    v = {m: 2.0 + d * m for m in range(20)}
    step = 10
    assert apply(meancache_weights(sigmas, step, k), v) == pytest.approx(v[step - 1] + (k - 1) / (2 * k) * d)


def test_zero_length_window_falls_back_to_reuse():
    sigmas = [1.0, 0.5, 0.0, 0.0, 0.0]
    assert meancache_weights(sigmas, 3, 1) == {2: 1.0}
    assert meancache_weights(sigmas, 4, 2) == {3: 1.0}  # window [0, 0]: no division by zero
    assert meancache2_weights(sigmas, 4, [2, 3]) == {3: 1.0}


def test_meancache2_by_hand():
    sigmas = [1.0, 0.8, 0.5, 0.3, 0.1, 0.0]
    # computed r=1 (0.8), a=2 (0.5); step 4: t = (0.1 - 0.5) / (0.5 - 0.8) = 4/3
    assert meancache2_weights(sigmas, 4, [1, 2]) == pytest.approx({1: -4 / 3, 2: 7 / 3})
    assert meancache2_weights(sigmas, 4, [2]) == {2: 1.0}


@hsettings(max_examples=50, deadline=None)
@given(
    n=st.integers(4, 30),
    step_frac=st.floats(0.1, 0.95),
    span=st.integers(1, 8),
    estimator=st.sampled_from(["meancache", "meancache2", "reuse"]),
)
def test_weights_preserve_a_constant_velocity(n, step_frac, span, estimator):
    sigmas = flow_sigmas(n)
    step = max(1, int(step_frac * (n - 1)))
    computed = list(range(max(0, step - 3), step))
    weights = estimator_weights(estimator, sigmas, step, span, computed)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert all(m < step for m in weights)


def test_meancache2_reproduces_euler_on_a_field_linear_in_sigma():
    a, b = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.5, 0.4, -0.7])

    def velocity(x, sigma):
        return a + b * sigma

    sigmas = flow_sigmas(30)
    compute = [i in (0, 1, 2, 9, 15, 16, 23, 29) for i in range(30)]
    schedule = Schedule(sigmas, compute, meancache2_spans(compute), "meancache2", budget=8)
    x0 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    a, b = a.double(), b.double()
    full, _ = sample_euler(velocity, x0, sigmas)
    cached, stats = sample_euler(velocity, x0, sigmas, Stepper(schedule))
    assert stats.model_calls == 8
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-12)


def test_reuse_is_one_coarse_euler_step():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert reuse_weights(1) == {1: 1.0}
    assert estimator_weights("reuse", sigmas, 3, 1, [0, 1]) == {1: 1.0}
    with pytest.raises(ValueError, match="unknown estimator"):
        estimator_weights("nope", sigmas, 3, 1, [0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator", ["meancache", "meancache2", "reuse"])
def test_combine_keeps_dtype_and_device(device, dtype, estimator):
    sigmas = flow_sigmas(12)
    gen = torch.Generator().manual_seed(0)
    ref = {m: torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for m in range(6)}
    vel = {m: t.to(device=device, dtype=dtype) for m, t in ref.items()}
    weights = estimator_weights(estimator, sigmas, 6, 4, [3, 5])
    out = combine(weights, vel)
    assert out.dtype == dtype and out.device.type == device
    exact = apply(weights, {m: t.to(dtype).double() for m, t in ref.items()})
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double().cpu(), exact, rtol=tol, atol=tol * 4)
