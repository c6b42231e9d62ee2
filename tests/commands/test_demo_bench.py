"""The demo and benchmark commands end to end on the embedded model (quick settings)."""

import json

from comfy_meancache.cli import main


def test_bench_quick_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
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
