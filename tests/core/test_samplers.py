"""The benchmark's multistep samplers, checked by formulas (tests/comfyui compares them with ComfyUI's)."""

import pytest
import torch
from exact_flow import Field, noise

from comfy_meancache.bench_zoo import sampler_sigmas
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.samplers import SAMPLERS, UNI_PC_LAST_SIGMA, _deis_weights, _vp_times

SIGMAS = torch.tensor(flow_sigmas(12), dtype=torch.float64)


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_is_exact_when_the_denoised_prediction_is_constant(name):
    """With ``denoised = c`` the ODE ``dx/dsigma = (x - c)/sigma`` gives ``x = c + (sigma/sigma_0)(x_0 - c)``;
    UniPC integrates that exactly and ends at sigma 0.001, where ComfyUI's does."""
    target = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    out = SAMPLERS[name](lambda x, sigma: target.expand_as(x), noise(), SIGMAS)
    expected = target + UNI_PC_LAST_SIGMA / float(SIGMAS[0]) * (noise() - target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_uni_pc_calls_the_model_once_per_step_but_the_last_and_refuses_one_step():
    field = Field()
    SAMPLERS["uni_pc"](field, noise(), SIGMAS)
    assert field.calls == len(SIGMAS) - 1
    with pytest.raises(ValueError, match="at least 2 steps"):
        SAMPLERS["uni_pc"](field, noise(), SIGMAS[-2:])


def test_deis_weights_integrate_d_sigma_and_reproduce_polynomials_in_vp_time():
    """Each step's weights sum to its sigma step, and a ``d`` linear in VP time integrates exactly."""
    times, beta_min, beta_d = _vp_times(SIGMAS)
    for i in range(2, len(SIGMAS) - 2):
        weights = _deis_weights(times, i, 3, beta_min, beta_d)
        step = float(SIGMAS[i + 1] - SIGMAS[i])
        assert sum(weights) == pytest.approx(step, rel=1e-3)
        linear = sum(w * times[i - k] for k, w in enumerate(weights))
        assert linear == pytest.approx(_moment(times[i], times[i + 1], beta_min, beta_d), rel=1e-3)


def _moment(start: float, end: float, beta_min: float, beta_d: float) -> float:
    """``integral of tau d sigma(tau)`` over [start, end] by a fine trapezoid rule."""
    taus = torch.linspace(start, end, 200_001, dtype=torch.float64)
    sigma = torch.sqrt(1 / torch.exp(-0.5 * taus**2 * beta_d - taus * beta_min) - 1)
    return float(torch.trapezoid(taus, sigma))


def test_uni_pc_grids_drop_the_penultimate_sigma_as_comfyui_does():
    full = flow_sigmas(13, 3.0)
    assert sampler_sigmas("uni_pc", 12) == full[:-2] + full[-1:]
    assert sampler_sigmas("euler", 12) == flow_sigmas(12, 3.0)
