"""Calibration profiles: costs, grid transfer, round trip on disk, hostile input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_costs import dense
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from comfy_meancache.core import profile as profile_module
from comfy_meancache.core.costs import trajectory_costs
from comfy_meancache.core.planner import plan
from comfy_meancache.core.prior import MixturePrior, mixture_trajectories
from comfy_meancache.core.profile import Profile, Trajectory, list_profiles, profile_paths, subsample
from comfy_meancache.core.runtime import cached_denoiser
from comfy_meancache.core.schedule import MEASURED_WARMUP, PlannerSettings
from comfy_meancache.core.sigmas import flow_sigmas


def run_on(sigmas, seed=0):
    v, x = mixture_trajectories(sigmas, MixturePrior(trajectories=4, dim=16, seed=seed))
    return Trajectory(list(sigmas), v.float(), x.float())


def test_costs_on_the_recorded_grid_are_the_trajectory_costs():
    sigmas = flow_sigmas(20)
    run = run_on(sigmas)
    profile = Profile("p", runs=[run])
    costs = profile.costs(sigmas, "meancache", max_span=3, max_gap=6)
    expected = dense(trajectory_costs(sigmas, run.velocities, run.states, "meancache", 3, 6))
    np.testing.assert_array_equal(dense(costs), expected)
    assert costs.source == "profile p (1 runs)"


def test_runs_average_in():
    sigmas = flow_sigmas(12)
    a, b = run_on(sigmas, 1), run_on(sigmas, 2)
    both = dense(Profile("p", runs=[a, b]).costs(sigmas, "reuse"))
    single = [dense(Profile("p", runs=[r]).costs(sigmas, "reuse")) for r in (a, b)]
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2)


def test_another_grid_is_interpolated_in_sigma():
    recorded = flow_sigmas(50)
    profile = Profile("p", runs=[run_on(recorded)])
    target = flow_sigmas(20)
    costs = profile.costs(target, "meancache2")
    assert costs.steps == 20 and "interpolated" in costs.source
    exact = run_on(target)
    reference = dense(trajectory_costs(target, exact.velocities, exact.states, "meancache2"))
    finite = np.isfinite(reference) & (reference > 0)
    ratio = dense(costs)[finite] / reference[finite]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.35)  # same trajectories, 50 -> 20 steps


def test_interpolation_is_exact_for_a_field_linear_in_sigma():
    recorded = flow_sigmas(40)
    v = torch.stack([torch.tensor([1.0, -2.0]) + s * torch.tensor([0.5, 3.0]) for s in recorded[:-1]])
    x = torch.zeros(41, 2)
    for i in range(40):
        x[i + 1] = x[i] + (recorded[i + 1] - recorded[i]) * v[i]
    run = Trajectory(recorded, v, x)
    target = flow_sigmas(15)
    moved_v, moved_x, flag = run.on_grid(target)
    assert flag
    expected = torch.stack([torch.tensor([1.0, -2.0]) + s * torch.tensor([0.5, 3.0]) for s in target[:-1]])
    torch.testing.assert_close(moved_v, expected)


def test_save_load_round_trip(tmp_path):
    sigmas = flow_sigmas(10)
    profile = Profile("zimage-cfg4", {"model": "Lumina2", "cfg": 4.0}, [run_on(sigmas, 1), run_on(sigmas, 2)])
    path = profile.save(tmp_path)
    assert path == tmp_path / "zimage-cfg4.json" and (tmp_path / "zimage-cfg4.safetensors").exists()
    loaded = Profile.load(tmp_path, "zimage-cfg4")
    assert loaded.metadata == {"model": "Lumina2", "cfg": 4.0} and len(loaded.runs) == 2
    np.testing.assert_array_equal(dense(loaded.costs(sigmas, "reuse")), dense(profile.costs(sigmas, "reuse")))
    assert list_profiles(tmp_path) == ["zimage-cfg4"]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "", ".hidden", "x" * 65, "a..b", None, "nul\x00"])
def test_names_never_leave_the_folder(tmp_path, name):
    with pytest.raises(ValueError, match="not allowed"):
        profile_paths(tmp_path, name)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.json").write_text("{}")
    folder = tmp_path / "profiles"
    folder.mkdir()
    os.symlink(outside / "evil.json", folder / "evil.json")
    with pytest.raises(ValueError, match="outside"):
        Profile.load(folder, "evil")


def write_profile(folder, document, tensors=True):
    folder.mkdir(exist_ok=True)
    (folder / "p.json").write_text(document if isinstance(document, str) else json.dumps(document))
    if tensors:
        Profile("p", runs=[run_on(flow_sigmas(4))]).save(folder / "ok")
        (folder / "ok" / "p.safetensors").rename(folder / "p.safetensors")


GOOD = {
    "format": "comfy-meancache-profile",
    "version": 1,
    "name": "p",
    "metadata": {},
    "runs": [{"sigmas": flow_sigmas(4)}],
}


@pytest.mark.parametrize(
    "document,message",
    [
        ("{not json", "not a usable"),
        ("[" * 100_000, "recursion"),
        ({"format": "other"}, "not a MeanCache profile"),
        (GOOD | {"version": 7}, "version 7"),
        (GOOD | {"runs": "many"}, "runs a list"),
        (GOOD | {"runs": [{"sigmas": [1.0, float("nan"), 0.0, 0.0, 0.0]}]}, "finite"),
        (GOOD | {"runs": [{"sigmas": [1.0, 0.5]}]}, "needs 1 velocities"),
        (GOOD | {"runs": [{"sigmas": list(range(20000))}]}, "at most 10001"),
        (GOOD | {"runs": [{"sigmas": flow_sigmas(4)}] * 2}, "run1"),
        (GOOD | {"metadata": [1, 2]}, "metadata must be an object"),
        ([1, 2, 3], "not a MeanCache profile"),
    ],
)
def test_malformed_profiles_give_clean_errors(tmp_path, document, message):
    write_profile(tmp_path, document)
    with pytest.raises(ValueError, match=message) as err:
        Profile.load(tmp_path, "p")
    assert "p.json" in str(err.value)


def test_missing_or_corrupt_tensors(tmp_path):
    write_profile(tmp_path, GOOD, tensors=False)
    with pytest.raises(ValueError, match="does not exist"):
        Profile.load(tmp_path, "p")
    (tmp_path / "p.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="p.json"):
        Profile.load(tmp_path, "p")


@hsettings(max_examples=40, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    )
)
def test_fuzzed_json_never_crashes(tmp_path_factory, document):
    folder = tmp_path_factory.mktemp("fuzz")
    write_profile(folder, GOOD | {"runs": document} if isinstance(document, list) else document)
    try:
        Profile.load(folder, "p")
    except ValueError as exc:
        assert "p.json" in str(exc)


def test_subsample_bounds_elements():
    latent = torch.randn(2, 16, 128, 128)
    small = subsample(latent)
    assert small.shape[:2] == (2, 16) and small[0].numel() <= 4096
    assert torch.equal(small, latent[:, :, ::8, ::8])
    video = torch.randn(1, 16, 21, 90, 160)
    assert subsample(video)[0].numel() <= 4096
    tiny = torch.randn(1, 4, 8, 8)
    assert torch.equal(subsample(tiny), tiny)


def test_recorder_builds_the_euler_trajectory():
    from comfy_meancache.core.profile import TrajectoryRecorder

    sigmas = [1.0, 0.6, 0.3, 0.0, 0.0]  # a grid ending [.., 0, 0]: the zero step is never evaluated
    recorder = TrajectoryRecorder()
    x = torch.randn(1, 2, 4, 4)
    for step in range(3):
        v = torch.full_like(x, float(step + 1))
        recorder.observe(step, x, v)
        x = x + (sigmas[step + 1] - sigmas[step]) * v
    run = recorder.trajectory(sigmas)
    assert run.sigmas == [1.0, 0.6, 0.3, 0.0]
    torch.testing.assert_close(run.states[-1], x)
    with pytest.raises(ValueError, match="did not evaluate every step"):
        TrajectoryRecorder().trajectory(sigmas)


def test_runs_of_any_shape_share_one_profile_and_keep_their_shapes(tmp_path):
    """Costs are per-element means, so runs of other resolutions or batch sizes average in alike."""
    sigmas = flow_sigmas(10)
    runs = [run_on(sigmas, 1)]
    for trajectories, dim in [(2, 16), (4, 8)]:
        v, x = mixture_trajectories(sigmas, MixturePrior(trajectories=trajectories, dim=dim, seed=3))
        runs.append(Trajectory(list(sigmas), v.float(), x.float()))
    profile = Profile("mixed")
    for run in runs:
        profile.add(run)
    profile.save(tmp_path)
    loaded = Profile.load(tmp_path, "mixed")
    assert [tuple(r.states.shape) for r in loaded.runs] == [(11, 4, 16), (11, 2, 16), (11, 4, 8)]
    per_run = [trajectory_costs(sigmas, r.velocities, r.states, "reuse").band for r in runs]
    np.testing.assert_array_equal(loaded.costs(sigmas, "reuse").band, np.mean(per_run, axis=0))


def fail_half_way(monkeypatch, part: str) -> None:
    """Make the save of ``part`` write half its bytes and then fail, as on a full disk."""
    if part == "tensors":

        def save_file(tensors, path):
            Path(path).write_bytes(b"\x00" * 16)
            raise OSError("No space left on device")

        monkeypatch.setattr(profile_module, "save_file", save_file)
        return
    write_text = Path.write_text

    def half_text(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", half_text)


@pytest.mark.parametrize("part", ["tensors", "json"])
def test_a_save_that_fails_half_way_keeps_the_previous_profile(tmp_path, monkeypatch, part):
    sigmas = flow_sigmas(10)
    Profile("p", {"runs": 1}, [run_on(sigmas, 1)]).save(tmp_path)
    with monkeypatch.context() as patch:
        fail_half_way(patch, part)
        with pytest.raises(OSError, match="No space left"):
            Profile("p", {"runs": 2}, [run_on(sigmas, 1), run_on(sigmas, 2)]).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.safetensors"]  # no temporary files left
    loaded = Profile.load(tmp_path, "p")
    assert loaded.metadata == {"runs": 1} and len(loaded.runs) == 1
    torch.testing.assert_close(loaded.runs[0].states, run_on(sigmas, 1).states)


def test_a_plan_from_a_profile_computes_only_step_0_of_the_warm_up_unless_settings_are_given():
    sigmas = flow_sigmas(20)
    profile = Profile("p", runs=[run_on(sigmas)])
    measured = cached_denoiser(None, sigmas, compute_steps=8, profile=profile)
    assert measured.schedule.settings.warmup == MEASURED_WARMUP == 1
    expected = plan(
        sigmas, compute_steps=8, settings=PlannerSettings(warmup=1), costs=profile.costs(sigmas, "meancache2")
    )
    assert measured.schedule.computed_steps == expected.computed_steps
    kept = cached_denoiser(None, sigmas, compute_steps=8, profile=profile, settings=PlannerSettings())
    assert kept.schedule.settings.warmup == 3 and kept.schedule.computed_steps[:3] == (0, 1, 2)
    assert cached_denoiser(None, sigmas, compute_steps=8).schedule.settings.warmup == 3  # even: nothing measured
