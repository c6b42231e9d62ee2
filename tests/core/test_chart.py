"""Plan/run charts: fixed-size IMAGE tensors that follow the content, text summary, no pyplot.

A render costs about half a second here, so renders are shared through
module-scoped fixtures and each test adds as few as it can.
"""

import ast
import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from comfy_meancache.core import chart
from comfy_meancache.core.chart import HEIGHT_PX, WIDTH_PX, plan_chart, run_chart, summary_text
from comfy_meancache.core.euler import sample_euler
from comfy_meancache.core.schedule import Edge, Schedule, meancache2_spans
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.core.stepper import Action, Stepper


def toy_velocity(x, sigma):
    return torch.sin(x) * sigma


def every_kth(n, k, cost=1e-3):
    """meancache2 schedule computing the warm-up, every k-th and the last step (no planner: instant at 200 steps)."""
    compute = [i < 3 or i % k == 0 or i == n - 1 for i in range(n)]
    span = meancache2_spans(compute)
    nodes = [i for i, c in enumerate(compute) if c]
    edges = tuple(Edge(a, b, span[a + 1], cost * (b - a)) for a, b in zip(nodes, nodes[1:]) if b - a > 1)
    return Schedule(flow_sigmas(n), compute, span, "meancache2", budget=sum(compute), edges=edges)


def fixed_wall(stats, seconds=0.01):
    """Replace measured wall times so images compare by content, not by timing noise."""
    for r in stats.records:
        r.wall_s = seconds if r.action is Action.COMPUTE else None
    stats.wall_s = seconds * stats.model_calls
    return stats


def run(schedule, steps=None):
    """Sample the toy field under ``schedule``; ``steps`` < schedule steps is a partial run."""
    sigmas = schedule.sigmas if steps is None else schedule.sigmas[: steps + 1]
    _, stats = sample_euler(toy_velocity, torch.zeros(1, 4), sigmas, Stepper(schedule))
    return fixed_wall(stats)


def run_with_fallback(schedule):
    """A run that joins at the first planned skip: nothing to estimate from, so it is computed."""
    stepper = Stepper(schedule)
    x = torch.zeros(1, 4)
    for i in range(schedule.compute.index(False), schedule.steps):
        if stepper.decide(i, x) is Action.COMPUTE:
            stepper.record(i, toy_velocity(x, schedule.sigmas[i]))
        else:
            stepper.estimate(i)
    return fixed_wall(stepper.finish())


def assert_image(image):
    assert image.shape == (1, HEIGHT_PX, WIDTH_PX, 3)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.std()) > 0.05  # something was drawn


@pytest.fixture(scope="module")
def schedule10():
    return every_kth(10, 3)  # computes 0, 1, 2, 3, 6, 9


@pytest.fixture(scope="module")
def clean10(schedule10):
    return run(schedule10)


@pytest.fixture(scope="module")
def plan10(schedule10):
    return plan_chart(schedule10)


@pytest.fixture(scope="module")
def run10(schedule10, clean10):
    return run_chart(schedule10, clean10)


def test_fixed_size_for_any_step_count_plan_and_run(plan10, run10):
    schedule50 = every_kth(50, 3)
    for image in (plan10, run10, run_chart(schedule50, run(schedule50)), plan_chart(every_kth(200, 4))):
        assert_image(image)


def test_deterministic_and_stats_none_is_the_plan_chart(schedule10, clean10, plan10, run10):
    assert torch.equal(run_chart(schedule10, clean10), run10)
    assert torch.equal(run_chart(schedule10, None), plan10)


def test_image_follows_the_content(schedule10, plan10, run10):
    other = every_kth(10, 4)
    assert other.compute != schedule10.compute
    assert not torch.equal(plan_chart(other), plan10)
    fallback = run_with_fallback(schedule10)
    assert fallback.fallbacks
    assert not torch.equal(run_chart(schedule10, fallback), run10)
    assert not torch.equal(run10, plan10)


def test_partial_run_with_many_notes():
    schedule = every_kth(200, 4).with_notes(*(f"planner note {i} " + "x" * 300 for i in range(30)))
    stats = run(schedule, steps=150)
    stats.notes += [f"run note {i}" for i in range(100)]
    assert stats.steps_run == 150
    assert_image(run_chart(schedule, stats))
    text = summary_text(schedule, stats)
    assert "150 of 200" in text and "... and" in text


def test_remapped_schedule_without_costs():
    remapped = every_kth(20, 4).remap(flow_sigmas(13))
    assert remapped.edges and all(e.cost is None for e in remapped.edges)
    assert_image(run_chart(remapped, run(remapped)))
    assert "n/a" in summary_text(remapped, None)


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_step_schedules(n):
    tiny = Schedule(flow_sigmas(n), [True] * n, [0] * n, "meancache2", budget=n)
    assert_image(run_chart(tiny, run(tiny)) if n == 1 else plan_chart(tiny))
    assert tiny.summary() in summary_text(tiny, None)


def test_summary_text(schedule10):
    schedule = schedule10.with_notes("a note from the planner")
    stats = run_with_fallback(schedule)
    stats.notes.append("a note from the run")
    text = summary_text(schedule, stats)
    assert schedule.summary() in text
    assert stats.summary() in text
    assert "step 4: no computed step before it in this run" in text
    assert "a note from the planner" in text and "a note from the run" in text
    assert "computed steps (plan): 0, 1, 2, 3, 6, 9" in text
    assert "computed steps (run): 4, 6, 9" in text
    plan_only = summary_text(schedule10, None)
    assert schedule10.summary() in plan_only and "plan only" in plan_only


def test_title_gives_the_speedup_over_every_model_evaluation(schedule10, clean10):
    assert chart.title_text(schedule10, clean10)[0] == "MeanCache run: 1.67x model-call speedup (6 calls for 10 steps)"
    heun = replace(clean10, extra_evaluations=9)  # a corrector per step but the last always calls the model
    assert chart.title_text(schedule10, heun)[0] == (
        "MeanCache run: 1.27x model-call speedup (15 calls for 10 steps + 9 extra evaluations)"
    )
    assert (
        summary_text(schedule10, heun)
        .splitlines()[1]
        .startswith("run: 10 steps + 9 extra evaluations -> 15 model calls (19 uncached, 1.27x), 4 skipped, ")
    )


def test_cost_labels():
    assert chart._fmt_cost(None) == "n/a"
    assert chart._fmt_cost(0.00058) == "5.8e-4"
    assert chart._fmt_cost(0.25) == "0.25"


def test_no_pyplot():
    """pyplot's global state is not thread-safe, and ComfyUI renders in a worker thread."""
    tree = ast.parse(Path(chart.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr != "use", "matplotlib.use() must not be called"
    assert not any("pyplot" in m for m in modules)
    # Nor may the matplotlib modules it imports pull pyplot in (a subprocess, without torch: fast).
    imported = sorted(m for m in modules if m.split(".")[0] == "matplotlib" and _is_module(m))
    assert "matplotlib.backends.backend_agg" in imported
    code = "import sys\n" + "".join(f"import {m}\n" for m in imported)
    code += "assert 'matplotlib.pyplot' not in sys.modules\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_cost_heatmap_is_a_fixed_size_image():
    from comfy_meancache.core.chart import cost_heatmap
    from comfy_meancache.core.prior import prior_costs

    for estimator in ("meancache", "meancache2"):
        image = cost_heatmap(prior_costs(flow_sigmas(20), estimator), 6, "test")
        assert image.shape == (1, HEIGHT_PX, WIDTH_PX, 3) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.05


def test_fragments_summary_joins_the_fragments_of_one_plan():
    """Two samplers (Wan 2.2's high- and low-noise models, or SplitSigmas halves) each run a slice of one plan."""
    plan = every_kth(30, 4)
    high, low = plan.fragment(0, plan.sigmas[:13]), plan.fragment(12, plan.sigmas[12:])
    first, second = run(high), run(low)
    calls = high.model_calls + low.model_calls
    expected = (
        f"fragment 2 of 2 of a 30-step plan (steps 12-29); all 2 fragments: 30 steps -> {calls} model calls "
        f"({30 / calls:.2f}x)"
    )
    older = run(every_kth(30, 2).fragment(0, plan.sigmas[:13]))  # an earlier run of the same slice: the newest counts
    assert older.model_calls != first.model_calls
    assert chart.fragments_summary(plan, second, [older, first, second]) == expected
    assert chart.fragments_summary(plan, second, [second]) == (
        f"a fragment of a 30-step plan (steps 12-29; earlier fragments from step 12); all 1 fragment: "
        f"18 steps -> {low.model_calls} model calls ({18 / low.model_calls:.2f}x)"
    )
    assert chart.fragments_summary(plan, run(plan), []) == ""  # the whole plan: not a fragment
    assert chart.fragments_summary(every_kth(20, 4), second, [first]) == ""  # another grid
