"""Sigma grids and the plan command."""

import json

import pytest

from comfy_meancache.cli import main
from comfy_meancache.core.sigmas import flow_sigmas


def test_zimage_simple_8_steps():
    """ComfyUI 0.8.0, Z-Image (shift 3), simple, 8 steps (checked in ComfyUI)."""
    expected = [1, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0]
    assert flow_sigmas(8, 3.0, "simple") == pytest.approx(expected, abs=1e-4)


def test_denoise_keeps_the_tail():
    full = flow_sigmas(40)
    assert flow_sigmas(20, denoise=0.5) == full[-21:]


@pytest.mark.parametrize("scheduler", ["simple", "normal", "sgm_uniform"])
def test_grids_descend_to_zero(scheduler):
    sigmas = flow_sigmas(25, 3.0, scheduler)
    assert len(sigmas) == 26 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="unknown scheduler"):
        flow_sigmas(10, scheduler="karras")
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="denoise"):
        flow_sigmas(10, denoise=0)


def test_plan_command_summary(capsys):
    assert main(["plan", "--steps", "50", "--shift", "3", "--scheduler", "simple", "--compute-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("50 steps -> 20 model calls (2.50x), skips 30")


def test_plan_command_json(capsys):
    assert main(["plan", "--steps", "30", "--compute-steps", "12", "--estimator", "meancache", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sum(data["compute"]) == 12 and data["estimator"] == "meancache" and data["budget"] == 12
    assert len(data["sigmas"]) == 31 and len(data["span"]) == 30


def test_plan_command_reports_bad_input(capsys):
    assert main(["plan", "--steps", "50", "--compute-steps", "60"]) == 2
    assert "compute steps 60 > steps 50" in capsys.readouterr().err
