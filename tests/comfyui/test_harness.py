"""Proves the ComfyUI test harness does what the other integration tests rely on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import comfy.model_base
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models
import harness
import nodes
import pytest
import torch

STEPS = 30


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def test_tiny_zimage_is_real_zimage_config(zimage_model):
    base = zimage_model.model
    assert type(base) is comfy.model_base.Lumina2
    assert type(base.model_config) is comfy.supported_models.ZImage
    ms = zimage_model.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.ModelSamplingDiscreteFlow)
    assert isinstance(ms, comfy.model_sampling.CONST)
    assert ms.shift == pytest.approx(3.0) and ms.multiplier == pytest.approx(1.0)
    assert zimage_model.get_model_object("latent_format").latent_channels == 16
    assert harness.model_family(zimage_model) == "zimage"
    dm = base.diffusion_model
    assert dm.pad_tokens_multiple == 32 and dm.time_scale == 1000.0
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in dm.parameters())
    # Z-Image's "simple" schedule at shift 3 (reference doc, section 9).
    sig = harness.ksampler_sigmas(zimage_model, 8)
    expected = [1, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0]
    assert sig.tolist() == pytest.approx(expected, abs=1e-4)


def test_other_models_are_other_families(flux_model, sd_model):
    assert type(flux_model.model) is comfy.model_base.Flux
    assert not isinstance(flux_model.model, comfy.model_base.Lumina2)
    fms = flux_model.get_model_object("model_sampling")
    assert isinstance(fms, comfy.model_sampling.CONST)
    assert isinstance(fms, comfy.model_sampling.ModelSamplingFlux)
    assert harness.model_family(flux_model) == "flux"

    assert sd_model.model.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(sd_model.get_model_object("model_sampling"), comfy.model_sampling.EPS)
    assert sd_model.get_model_object("latent_format").latent_channels == 4
    assert harness.model_family(sd_model) == "sd"


def test_weights_are_deterministic_per_seed():
    a, b, c = harness.tiny_flow_other(seed=3), harness.tiny_flow_other(seed=3), harness.tiny_flow_other(seed=4)
    sa, sb, sc = (m.model.diffusion_model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("family", ["zimage", "flux", "sd"])
def test_sampling_is_deterministic(family, request):
    model = request.getfixturevalue(f"{family}_model")
    pos, neg = harness.make_cond_pair(model)
    t0 = time.perf_counter()
    a = harness.sample(model, seed=7, steps=STEPS, cfg=1.0, positive=pos, negative=neg)
    elapsed = time.perf_counter() - t0
    b = harness.sample(model, seed=7, steps=STEPS, cfg=1.0, positive=pos, negative=neg)
    c = harness.sample(model, seed=8, steps=STEPS, cfg=1.0, positive=pos, negative=neg)
    channels = 4 if family == "sd" else 16
    assert a.shape == (1, channels, 16, 16)
    assert torch.isfinite(a).all() and torch.isfinite(c).all()
    assert torch.equal(a, b), "same seed must give a bit-identical latent"
    assert not torch.allclose(a, c), "different seeds must give different latents"
    # "In seconds": generous bound so a busy machine does not fail the suite.
    assert elapsed < 30, f"{family}: 30-step sample took {elapsed:.1f}s"
    print(f"\n{family}: 30-step euler cfg1 KSampler {elapsed:.2f}s")


def test_sd_eps_samples_without_nan_under_cfg(sd_model):
    pos, neg = harness.make_cond_pair(sd_model)
    out = harness.sample(
        sd_model, seed=1, steps=10, cfg=7.5, sampler_name="dpmpp_2m", scheduler="karras", positive=pos, negative=neg
    )
    assert torch.isfinite(out).all()


def test_ksampler_and_custom_path_agree(zimage_model):
    pos, neg = harness.make_cond_pair(zimage_model, pos_tokens=9, neg_tokens=9)
    a = harness.sample(zimage_model, seed=5, steps=8, cfg=3.0, positive=pos, negative=neg)
    sig = harness.scheduler_sigmas(zimage_model, 8)
    assert torch.equal(sig, harness.ksampler_sigmas(zimage_model, 8))
    b = harness.sample_custom(zimage_model, sigmas=sig, seed=5, cfg=3.0, positive=pos, negative=neg)
    c = harness.sample(zimage_model, seed=5, steps=0, cfg=3.0, sigmas=sig, positive=pos, negative=neg)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.equal(b, c)


def test_split_sigmas_halves_reproduce_the_full_run(zimage_model):
    pos, neg = harness.make_cond_pair(zimage_model)
    sig = harness.scheduler_sigmas(zimage_model, 8)
    high, low = harness.split_sigmas(sig, 3)
    assert high.tolist() == sig[:4].tolist() and low.tolist() == sig[3:].tolist()
    full = harness.sample_custom(zimage_model, sigmas=sig, seed=2, cfg=1.0, positive=pos, negative=neg)
    mid = harness.sample_custom(zimage_model, sigmas=high, seed=2, cfg=1.0, positive=pos, negative=neg)
    out = harness.sample_custom(
        zimage_model, sigmas=low, latent=mid, add_noise=False, cfg=1.0, positive=pos, negative=neg
    )
    # process_latent_out/in between the halves costs a little float round-off.
    torch.testing.assert_close(out, full, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------
# Call counts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["zimage", "flux"])
def test_call_counts_cfg_and_batching(family, request):
    model = request.getfixturevalue(f"{family}_model")
    n = STEPS
    sig = harness.ksampler_sigmas(model, n)

    # cfg 1: the uncond is never evaluated -> N calls of batch 1.
    counter = harness.DiffusionModelCallCounter(model)
    pos, neg = harness.make_cond_pair(model, pos_tokens=12, neg_tokens=7)
    harness.sample(counter.model, seed=0, steps=n, cfg=1.0, positive=pos, negative=neg)
    assert counter.count == n
    assert counter.batch_sizes == [1] * n
    assert [c.cond_or_uncond for c in counter.calls] == [[0]] * n
    assert counter.sigmas == pytest.approx(sig[:-1].tolist())
    assert counter.all_innermost

    # cfg 4, prompt lengths differ: cond and uncond cannot batch -> 2N calls of batch 1.
    counter.reset()
    harness.sample(counter.model, seed=0, steps=n, cfg=4.0, positive=pos, negative=neg)
    assert counter.count == 2 * n
    assert counter.batch_sizes == [1] * (2 * n)
    assert sorted(sum((c.cond_or_uncond for c in counter.calls[:2]), [])) == [0, 1]
    assert counter.sigmas[::2] == pytest.approx(sig[:-1].tolist())

    # cfg 4, equal lengths: one batched call (cond + uncond) per step -> N calls of batch 2.
    counter.reset()
    pos, neg = harness.make_cond_pair(model, pos_tokens=10, neg_tokens=10)
    harness.sample(counter.model, seed=0, steps=n, cfg=4.0, positive=pos, negative=neg)
    assert counter.count == n
    assert counter.batch_sizes == [2] * n
    assert all(sorted(c.cond_or_uncond) == [0, 1] for c in counter.calls)


def test_latent_batch_multiplies_forward_batch(zimage_model):
    counter = harness.DiffusionModelCallCounter(zimage_model)
    pos, neg = harness.make_cond_pair(zimage_model, pos_tokens=8, neg_tokens=8)
    out = harness.sample(counter.model, seed=0, steps=4, cfg=2.0, batch=2, positive=pos, negative=neg)
    assert out.shape[0] == 2
    assert counter.batch_sizes == [4] * 4  # 2 latents x (cond + uncond)
    assert len(counter.calls[0].sigmas) == 2


def test_sd_crossattn_lengths_still_batch(sd_model):
    """SD's CONDCrossAttn repeats 77 vs 154 tokens to the lcm, so they batch (unlike Z-Image/Flux)."""
    counter = harness.DiffusionModelCallCounter(sd_model)
    pos, neg = harness.make_cond_pair(sd_model, pos_tokens=154, neg_tokens=77)
    harness.sample(counter.model, seed=0, steps=4, cfg=5.0, positive=pos, negative=neg)
    assert counter.batch_sizes == [2] * 4
    assert counter.calls[0].timestep[0] > 1.0  # SD's model timestep is 0..999, not sigma


def test_heun_evaluation_count(zimage_model):
    n = 10
    rec = harness.PredictNoiseRecorder(zimage_model)
    counter = harness.DiffusionModelCallCounter(rec.model)
    harness.sample(counter.model, seed=0, steps=n, cfg=1.0, sampler_name="heun")
    # Heun: predictor + corrector per step, except the last step (sigma_next == 0).
    assert rec.count == 2 * n - 1
    assert counter.count == 2 * n - 1
    # The corrector runs at sigma[i+1], so nearest-sigma step indices repeat.
    assert rec.step_indices() == [0] + [i for i in range(1, n) for _ in (0, 1)]


def test_counter_survives_clone_and_reports_wrapper_order(zimage_model):
    counter = harness.DiffusionModelCallCounter(zimage_model)
    clone = counter.model.clone()  # what a node under test does
    harness.sample(clone, seed=0, steps=3, cfg=1.0)
    assert counter.count == 3 and counter.all_innermost

    # A DIFFUSION_MODEL wrapper registered after the counter runs inside it.
    inner_calls = []

    def inner(executor, *args, **kwargs):
        inner_calls.append(1)
        return executor(*args, **kwargs)

    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "later", inner)
    counter.reset()
    harness.sample(clone, seed=0, steps=3, cfg=1.0)
    assert counter.count == 3 and len(inner_calls) == 3
    assert not counter.all_innermost


# --------------------------------------------------------------------------
# PREDICT_NOISE recorder and sample_sigmas
# --------------------------------------------------------------------------


def test_predict_noise_sees_ksampler_sigmas(zimage_model):
    n = 12
    rec = harness.PredictNoiseRecorder(zimage_model, keep_outputs=True)
    pos, neg = harness.make_cond_pair(zimage_model)
    harness.sample(rec.model, seed=0, steps=n, cfg=4.0, positive=pos, negative=neg)
    expected = harness.ksampler_sigmas(zimage_model, n)
    assert rec.count == n  # one evaluation per euler step, whatever the CFG batching
    for ev in rec.evaluations:
        assert ev.sample_sigmas is not None
        torch.testing.assert_close(ev.sample_sigmas, expected)
        assert ev.output.shape == (1, 16, 16, 16)
    assert rec.sigmas == pytest.approx(expected[:-1].tolist())
    assert rec.step_indices() == list(range(n))


def test_denoise_and_partial_runs_shorten_sample_sigmas(zimage_model):
    n = 10
    full = harness.ksampler_sigmas(zimage_model, n)

    rec = harness.PredictNoiseRecorder(zimage_model)
    latent = harness.sample(zimage_model, seed=0, steps=n, cfg=1.0, return_dict=True)
    harness.sample(rec.model, seed=0, steps=n, cfg=1.0, denoise=0.5, latent=latent)
    ss = rec.evaluations[0].sample_sigmas
    expected = harness.ksampler_sigmas(zimage_model, n, denoise=0.5)
    torch.testing.assert_close(ss, expected)
    # KSampler keeps `steps` steps but over the low-noise tail of a 2N-step schedule.
    assert len(ss) == n + 1 and ss[0] < 0.8 and ss[-1] == 0
    torch.testing.assert_close(ss, harness.ksampler_sigmas(zimage_model, 2 * n)[-(n + 1) :])
    assert rec.count == n

    # KSamplerAdvanced start/end steps: a fragment of the full schedule.
    rec.reset()
    harness.sample(rec.model, seed=0, steps=n, cfg=1.0, start_step=2, last_step=6)
    ss = rec.evaluations[0].sample_sigmas
    torch.testing.assert_close(ss, full[2:7])
    torch.testing.assert_close(ss, harness.ksampler_sigmas(zimage_model, n, start_step=2, last_step=6))
    assert rec.count == 4

    # SplitSigmas second half through the custom path: shorter, not starting at 1.
    rec.reset()
    _, low = harness.split_sigmas(full, 4)
    harness.sample_custom(rec.model, sigmas=low, latent=latent, add_noise=False, cfg=1.0)
    torch.testing.assert_close(rec.evaluations[0].sample_sigmas, full[4:])
    assert rec.count == n - 4


# --------------------------------------------------------------------------
# Custom-node loading and node info
# --------------------------------------------------------------------------

_PACK_INIT = """
from comfy_api.latest import ComfyExtension, io


class HarnessEchoInt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HarnessTest_EchoInt",
            display_name="Harness Echo Int",
            category="testing/harness",
            description="Doubles an int.",
            inputs=[io.Int.Input("value", default=3, min=0, max=100, tooltip="a number")],
            outputs=[io.Int.Output(display_name="doubled")],
        )

    @classmethod
    def execute(cls, value) -> io.NodeOutput:
        return io.NodeOutput(value * 2)


class HarnessSetsClassAttr(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="HarnessTest_SetsClassAttr", inputs=[], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        cls.counter = 1  # not allowed on the executor's locked class
        return io.NodeOutput(1)


class _Ext(ComfyExtension):
    async def get_node_list(self):
        return [HarnessEchoInt, HarnessSetsClassAttr]


async def comfy_entrypoint():
    print("harness test pack loaded")
    return _Ext()
"""


def _write_pack(root: Path, name: str, init_text: str) -> Path:
    pack = root / name
    pack.mkdir()
    (pack / "__init__.py").write_text(textwrap.dedent(init_text))
    return pack


def test_load_v3_pack_and_node_info(tmp_path):
    pack = _write_pack(tmp_path, "harness_test_pack", _PACK_INIT)
    result = harness.load_custom_node_pack(pack)
    result.assert_ok()
    assert result.success and not result.failure_lines
    assert set(result.nodes) == {"HarnessTest_EchoInt", "HarnessTest_SetsClassAttr"}
    assert nodes.NODE_CLASS_MAPPINGS["HarnessTest_EchoInt"] is result.nodes["HarnessTest_EchoInt"]
    assert result.display_names["HarnessTest_EchoInt"] == "Harness Echo Int"
    assert "harness test pack loaded" in result.stdout
    assert any("seconds: " in line for line in result.log_lines)

    info = harness.node_info("HarnessTest_EchoInt")
    assert info == harness.node_info(result.nodes["HarnessTest_EchoInt"])
    assert info["name"] == "HarnessTest_EchoInt"
    assert info["display_name"] == "Harness Echo Int"
    assert info["category"] == "testing/harness"
    assert info["python_module"] == "custom_nodes.harness_test_pack"
    assert info["output"] == ["INT"] and info["output_name"] == ["doubled"]
    spec = info["input"]["required"]["value"]
    assert spec[0] == "INT" and spec[1]["default"] == 3 and spec[1]["max"] == 100
    assert info["input_order"] == {"required": ["value"]}

    assert harness.execute_node(result.nodes["HarnessTest_EchoInt"], value=21)[0] == 42
    with pytest.raises(AttributeError):
        harness.execute_node(result.nodes["HarnessTest_SetsClassAttr"])

    # Loading again re-executes the pack and re-registers fresh classes.
    again = harness.load_custom_node_pack(pack)
    again.assert_ok()
    assert set(again.nodes) == set(result.nodes)


def test_load_broken_pack_reports_import_failed(tmp_path):
    pack = _write_pack(tmp_path, "harness_broken_pack", "import module_that_does_not_exist_xyz\n")
    result = harness.load_custom_node_pack(pack)
    assert not result.success and not result.ok
    text = "\n".join(result.failure_lines)
    assert "IMPORT FAILED" in text and "Cannot import" in text
    with pytest.raises(AssertionError):
        result.assert_ok()


def test_core_node_ids_win_over_packs(tmp_path):
    pack = _write_pack(tmp_path, "harness_clash_pack", _PACK_INIT.replace("HarnessTest_EchoInt", "KSampler"))
    original = nodes.NODE_CLASS_MAPPINGS["KSampler"]
    result = harness.load_custom_node_pack(pack)
    result.assert_ok()
    assert nodes.NODE_CLASS_MAPPINGS["KSampler"] is original
    assert "KSampler" not in result.nodes and "KSampler" in harness.core_node_ids()


def test_load_pack_under_another_folder_name(tmp_path):
    pack = _write_pack(tmp_path, "harness_named_pack", _PACK_INIT)
    result = harness.load_custom_node_pack(pack, as_name="harness-renamed-pack")
    result.assert_ok()
    assert result.path.name == "harness-renamed-pack"
    assert harness.node_info("HarnessTest_EchoInt")["python_module"] == "custom_nodes.harness-renamed-pack"


def test_builtin_extra_nodes_count_as_core(tmp_path):
    failed = harness.load_builtin_extra_nodes()
    assert "nodes_custom_sampler.py" not in failed and "nodes_easycache.py" not in failed
    assert {"EasyCache", "SamplerCustomAdvanced", "ModelSamplingAuraFlow"} <= harness.core_node_ids()
    pack = _write_pack(tmp_path, "harness_clash_extra", _PACK_INIT.replace("HarnessTest_EchoInt", "EasyCache"))
    original = nodes.NODE_CLASS_MAPPINGS["EasyCache"]
    result = harness.load_custom_node_pack(pack)
    result.assert_ok()
    assert nodes.NODE_CLASS_MAPPINGS["EasyCache"] is original and "EasyCache" not in result.nodes


def test_node_info_of_a_v1_core_node():
    info = harness.node_info("KSampler")
    assert info["output"] == ["LATENT"] and info["name"] == "KSampler"
    assert info["input_order"]["required"][:3] == ["model", "seed", "steps"]


# --------------------------------------------------------------------------
# Skip path
# --------------------------------------------------------------------------


def test_missing_comfyui_skips_instead_of_erroring(tmp_path):
    here = Path(__file__).resolve().parent
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path / "nonexistent"), HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(here), "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=str(here),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped in .*", summary), out
    assert "ComfyUI not found at" in out
