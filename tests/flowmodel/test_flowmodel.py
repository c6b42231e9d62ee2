"""The embedded digits flow model: loading, ComfyUI conventions, guidance, and
that the shipped weights actually learned class-conditional digits.

Kept fast (one module-scoped load, 20-step samples at batch <= 80). The
digit checks need scikit-learn's bundled data set and skip without it.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
import torch

from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel import (
    WEIGHTS_PATH,
    EmbeddedFlowModel,
    TinyDiT,
    decode,
    load_embedded_model,
    sample_noise,
    training_info,
)

PER_CLASS = 4
LABELS = torch.arange(10).repeat_interleave(PER_CLASS)


def euler(model: EmbeddedFlowModel, noise: torch.Tensor, labels: torch.Tensor, steps: int, cfg: float):
    """Plain Euler on ComfyUI's shift-3 `simple` grid; returns (x0, velocities)."""
    sigmas = flow_sigmas(steps, shift=3.0, scheduler="simple")
    x, vs = noise * sigmas[0], []
    for i in range(steps):
        v = model.velocity(x, sigmas[i], labels, cfg)
        vs.append(v)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x, torch.stack(vs)


@pytest.fixture(scope="module")
def model() -> EmbeddedFlowModel:
    return load_embedded_model()


@pytest.fixture(scope="module")
def run_cfg4(model):
    return euler(model, sample_noise(len(LABELS), seed=0), LABELS, steps=20, cfg=4.0)


@pytest.fixture(scope="module")
def class_means() -> torch.Tensor:
    """Per-class mean training image [10, 256]; the reference a learned model must match."""
    pytest.importorskip("sklearn", reason="scikit-learn (digits data) not installed")
    from comfy_meancache.flowmodel.train import load_digits_16

    x, y = load_digits_16()
    return torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1)


def nearest_mean_accuracy(x0: torch.Tensor, means: torch.Tensor, labels: torch.Tensor) -> float:
    pred = torch.cdist(x0.clamp(-1, 1).flatten(1), means).argmin(1)
    return (pred == labels).float().mean().item()


def test_weights_file_is_small_safetensors_with_config():
    raw = WEIGHTS_PATH.read_bytes()
    assert len(raw) < 5_000_000
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 length + JSON header, never pickle
    header = json.loads(raw[8 : 8 + header_len])
    cfg = json.loads(header["__metadata__"]["config"])
    assert cfg["image_size"] == 16 and cfg["num_classes"] == 10


def test_loads_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    from comfy_meancache.flowmodel import _load_cached

    _load_cached.cache_clear()
    m = load_embedded_model()
    assert m.latent_shape == (1, 16, 16)
    assert load_embedded_model() is m  # cached


def test_param_count_in_range(model):
    assert 1_000_000 <= model.num_params() <= 2_000_000


def test_training_record_present():
    info = training_info()
    assert info["seed"] == 0
    assert 0.0 < info["final_train_loss"] < 0.2


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64])
def test_velocity_shape_and_dtype(model, in_dtype):
    x = sample_noise(3, seed=1).to(in_dtype)
    v = model.velocity(x, 0.7, torch.tensor([0, 5, 10]), cfg=3.0)
    assert v.shape == (3, 1, 16, 16) and v.dtype == in_dtype and v.device == x.device
    assert torch.isfinite(v).all()


def test_scalar_and_per_sample_sigma_agree(model):
    x, y = sample_noise(4, seed=2), torch.tensor([1, 2, 3, 4])
    a = model.velocity(x, 0.5, y)
    b = model.velocity(x, torch.full((4,), 0.5), y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cfg_one_is_the_pure_conditional_pass(model):
    x, y = sample_noise(4, seed=3), torch.tensor([7, 1, 10, 3])
    sigma = torch.full((4,), 0.4)
    with torch.no_grad():
        expected = model.net(x, sigma, y)
    assert torch.equal(model.velocity(x, 0.4, y, cfg=1.0), expected)


@pytest.mark.parametrize("cfg", [0.0, 2.5, 4.0])
def test_guidance_matches_two_separate_passes(model, cfg):
    x, y = sample_noise(5, seed=4), torch.tensor([0, 3, 6, 9, 2])
    cond = model.velocity(x, 0.6, y, cfg=1.0)
    uncond = model.velocity(x, 0.6, torch.full_like(y, model.null_label), cfg=1.0)
    # Batched (cond+uncond in one forward) vs two forwards differ only by GEMM
    # rounding (~1e-5); a wrong formula or swapped passes is off by O(1).
    expected = uncond + cfg * (cond - uncond)
    torch.testing.assert_close(model.velocity(x, 0.6, y, cfg=cfg), expected, rtol=1e-4, atol=1e-4)


def test_denoised_is_x_minus_sigma_v(model):
    x, y = sample_noise(2, seed=5), torch.tensor([4, 8])
    torch.testing.assert_close(model.denoised(x, 0.3, y, 2.0), x - 0.3 * model.velocity(x, 0.3, y, 2.0))


def test_sample_noise_is_deterministic_per_seed():
    state = torch.random.get_rng_state()
    a, b, c = sample_noise(6, seed=42), sample_noise(6, seed=42), sample_noise(6, seed=43)
    assert a.shape == (6, 1, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert abs(a.std().item() - 1.0) < 0.1


def test_decode_maps_to_unit_range():
    img = decode(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]))
    assert torch.equal(img, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_cfg4_samples_are_plausible_images(run_cfg4):
    x0, _ = run_cfg4
    img = decode(x0)
    assert torch.isfinite(x0).all()
    # Digits are bright strokes on a dark background: training images average ~0.3, std ~0.35.
    assert 0.15 < img.mean().item() < 0.45
    assert 0.2 < img.std().item() < 0.5
    assert img.flatten(1).std(1).min().item() > 0.15  # no sample collapsed to a flat image
    assert (img < 0.1).float().mean().item() > 0.3  # a real background (data: 0.43, clamped noise: 0.21)


def test_labels_steer_the_samples(run_cfg4):
    x0, _ = run_cfg4
    per_class = decode(x0).view(10, PER_CLASS, -1).mean(1)
    dists = torch.cdist(per_class, per_class) / per_class.shape[1] ** 0.5
    off_diag = dists[~torch.eye(10, dtype=torch.bool)]
    assert off_diag.min().item() > 0.1, "some classes produce the same images"


def test_samples_are_the_requested_digits(run_cfg4, class_means):
    x0, _ = run_cfg4
    assert nearest_mean_accuracy(x0, class_means, LABELS) >= 0.8


def test_unguided_samples_are_the_requested_digits(model, class_means):
    x0, _ = euler(model, sample_noise(len(LABELS), seed=1), LABELS, steps=20, cfg=1.0)
    assert nearest_mean_accuracy(x0, class_means, LABELS) >= 0.75


def test_untrained_model_fails_the_digit_check(model, class_means):
    # Negative control: the same check must reject a model that learned nothing.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = TinyDiT(model.config)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.02)
    x0, _ = euler(EmbeddedFlowModel(net), sample_noise(len(LABELS), seed=0), LABELS, steps=20, cfg=4.0)
    assert nearest_mean_accuracy(x0, class_means, LABELS) < 0.5


def test_velocity_field_is_curved(run_cfg4):
    # A step-skipping cache is only worth benchmarking if v changes along the
    # trajectory; a straight (constant-v) field would make every cache exact.
    _, vs = run_cfg4
    first, last = vs[0].flatten(1), vs[-1].flatten(1)
    cos = torch.nn.functional.cosine_similarity(first, last, dim=1)
    assert cos.mean().item() < 0.9
    rel = (vs[1:] - vs[:-1]).flatten(2).norm(dim=2).sum(0) / vs[0].flatten(1).norm(dim=1)
    assert rel.mean().item() > 0.2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inference(dtype, run_cfg4, model):
    half = load_embedded_model(dtype=dtype)
    x, y = sample_noise(8, seed=6), torch.arange(8)
    ref = model.velocity(x, 0.5, y, cfg=4.0)
    v = half.velocity(x, 0.5, y, cfg=4.0)
    assert v.dtype == torch.float32  # follows x, not the model
    assert ((v - ref).norm() / ref.norm()).item() < 0.05
    vh = half.velocity(x.to(dtype), 0.5, y, cfg=4.0)
    assert vh.dtype == dtype and torch.isfinite(vh).all()


def test_train_script_writes_a_loadable_file(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (digits data) not installed")
    from comfy_meancache.flowmodel import train

    out = tmp_path / "w.safetensors"
    train.main(["--out", str(out), "--steps", "2", "--batch", "8", "--depth", "1", "--threads", "1", "--no-eval"])
    m = load_embedded_model(path=out)
    assert m.config.depth == 1  # architecture comes from the file's metadata
    assert training_info(out)["steps"] == 2
    v = m.velocity(sample_noise(2, seed=0), 0.5, torch.tensor([1, 2]), cfg=2.0)
    assert torch.isfinite(v).all()


def test_training_sigmas_cover_the_unit_interval():
    from comfy_meancache.flowmodel.train import sample_sigmas

    s = sample_sigmas(6000, torch.Generator().manual_seed(0))
    assert 0.0 <= s.min().item() < 0.01 and 0.99 < s.max().item() <= 1.0
    hist = torch.histc(s, bins=10, min=0, max=1)
    assert hist.min().item() > 0.03 * len(s)  # every tenth of [0, 1] is trained
    assert s.median().item() > 0.6  # weighted toward the shift-3 grid's high sigmas
