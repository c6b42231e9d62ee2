"""The demo and benchmark commands end to end on the embedded model (quick settings)."""

import json

import pytest

from comfy_meancache.bench_zoo import Cell, paired, targets
from comfy_meancache.cli import main


def test_bench_quick_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--methods", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["cases"][0]["rows"]
    methods = {r["method"] for r in rows}
    assert {"fewer steps (plain Euler, B steps)", "meancache2, PSSP calibrated", "reuse, uniform grid"} <= methods
    for r in rows:
        if not r["note"] and "official" not in r["method"]:
            assert r["calls"] == r["budget"]  # every cached method spends exactly its budget
    best = max(r["psnr"][0] for r in rows if r["budget"] == 20)
    fewer = next(r["psnr"][0] for r in rows if r["budget"] == 20 and r["method"].startswith("fewer"))
    assert best > fewer + 6  # caching beats plainly sampling fewer steps by a clear margin
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| meancache2, PSSP calibrated |" in (tmp_path / "bench.md").read_text()


def test_demo_writes_the_png(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--steps", "30", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model calls 12 vs 30" in text and "PSNR vs full run" in text
    assert out.stat().st_size > 50_000


def test_calibrate_then_plan_from_the_profile(tmp_path, capsys):
    profile = tmp_path / "embedded.json"
    assert main(["calibrate", "--profile", str(profile), "--steps", "20", "--seeds", "2"]) == 0
    assert main(["calibrate", "--profile", str(profile), "--steps", "20", "--seeds", "2", "--first-seed", "2"]) == 0
    assert json.loads(profile.read_text())["metadata"]["runs"] == 2
    capsys.readouterr()
    assert main(["plan", "--steps", "30", "--compute-steps", "12", "--profile", str(profile), "--json"]) == 0
    schedule = json.loads(capsys.readouterr().out)
    assert sum(schedule["compute"]) == 12
    assert schedule["settings"]["cost_source"] == "profile embedded (2 runs, interpolated in sigma)"
    assert main(["plan", "--profile", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_zoo_quick_scores_every_method_at_its_exact_budget(tmp_path, capsys):
    assert main(["bench", "--quick", "--models", "digits-dit", "terrain-latent", "--out", str(tmp_path)]) == 0
    cells = json.loads((tmp_path / "zoo.json").read_text())["cells"]
    assert {c["model"] for c in cells} == {"digits-dit", "terrain-latent"}
    assert {c["method"] for c in cells} == {
        "full",
        "fewer steps",
        "default",
        "learned",
        "4th run",
        "prior",
        "calibrated",
    }
    assert {c["sampler"] for c in cells} == {"euler", "dpmpp_2m"}
    for c in cells:
        assert c["calls"] == c["budget"]  # every cached method spends exactly its budget
        assert 10 < c["psnr_exact"] < 80  # scored against Heun with 500 steps
        assert len(c["per_seed"]) == 8 and abs(sum(c["per_seed"]) / 8 - c["psnr_full"]) < 1e-3
    table = (tmp_path / "zoo.md").read_text()
    assert "| terrain-latent | 4 | dpmpp_2m | learned |" in table and "learned - fewer steps: min" in table
    assert "| digits-dit | 4 | euler | 4th run |" in table and "calibrated - 4th run: mean" in table


def test_zoo_targets_say_which_misses_the_seeds_cannot_tell_from_a_hit():
    def cell(method, budget, per_seed):
        return Cell("m", 1.0, "euler", method, budget, budget, sum(per_seed) / 4, 0.0, per_seed)

    cells = [
        cell("fewer steps", 20, [30.0, 40.0, 50.0, 60.0]),
        cell("default", 20, [32.0, 43.0, 52.0, 63.0]),  # +2.5 dB, standard error 0.29: 3 dB is within 2 of them
        cell("calibrated", 20, [36.0, 45.0, 56.0, 65.0]),  # 3.0 dB above default, standard error 0.58
        cell("fewer steps", 12, [20.0, 20.0, 20.0, 20.0]),
        cell("default", 12, [33.0, 44.0, 53.0, 64.0]),  # 1 dB above B = 20 on every seed: a real rise
        cell("calibrated", 12, [33.0, 44.0, 53.0, 64.0]),
    ]
    assert paired(cells[1], cells[0]) == pytest.approx((2.5, (1 / 3) ** 0.5 / 2))
    older = [Cell("m", 1.0, "euler", method, 20, 20, psnr, 0.0) for method, psnr in (("a", 47.5), ("b", 45.0))]
    assert paired(*older) == (2.5, 0.0)  # no per-seed values kept: no miss is put down to noise
    assert targets(cells) == [
        "default - fewer steps: min +2.5 dB over 2 cells, 1 cells >= +3 dB; mean at B=20 +2.5 dB; "
        "of the 1 short of +3 dB, 1 within 2 standard errors of it (seed-paired)",
        "calibrated - default: mean +1.5 dB, max +3.0 dB; within 3 dB in 2 of 2 cells (+0 within 2 standard "
        "errors), within 1.5 dB in 1 of 2 cells (+0 within 2 standard errors)",
        "cells where default gets better with fewer calls (> 0.5 dB): 1, by more than 0.5 dB plus 2 standard errors: 1",
    ]


def test_bench_overhead_times_every_case_through_the_cached_denoiser(tmp_path, capsys):
    assert main(["bench", "--overhead", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())["overhead"]
    assert len(rows) == 2 * 2 * 4 and all(r["mean_us_per_step"] > 0 for r in rows)
    learned, first = "meancache2 (auto: learning, learned plan)", "meancache2 (auto: first run, learning)"
    assert {r["estimator"] for r in rows} == {"meancache2", "meancache", learned, first}
    out = capsys.readouterr().out
    assert f"| [2, 16, 128, 128] | float32 | {learned} |" in out and f"| [2, 16, 128, 128] | float32 | {first} |" in out
