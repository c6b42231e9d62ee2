"""The model zoo: every member loads offline with the embedded model's
interface, follows ComfyUI's flow conventions, learned class structure, and
records its training; the trained members' data come from package files.

Kept fast: one cached load per model, 20-step samples at small batches.
"""

from __future__ import annotations

import socket

import pytest
import torch

from comfy_meancache.core.euler import sample_euler
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel.zoo import ARCHS, ZOO_MODELS, ZooModel, load_zoo_model, load_zoo_weights, sample_noise

NAMES = sorted(ZOO_MODELS)
PER_CLASS = 6


@pytest.fixture(scope="module", params=NAMES)
def model(request) -> ZooModel:
    return load_zoo_model(request.param)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def class_samples(model: ZooModel, cfg: float, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The same PER_CLASS noises sampled under every class: (x0 [K, PER_CLASS, ...], labels)."""
    k = model.num_classes
    noise = sample_noise(PER_CLASS, seed=0, shape=model.latent_shape).repeat(k, 1, 1, 1)
    labels = torch.arange(k).repeat_interleave(PER_CLASS)
    sigmas = flow_sigmas(steps, shift=3.0, scheduler="simple")
    x0, _ = sample_euler(lambda x, s: model.velocity(x, s, labels, cfg), noise * sigmas[0], sigmas)
    return x0.view(k, PER_CLASS, *model.latent_shape), labels


def test_registry_has_digits_and_three_trained_models():
    assert set(ZOO_MODELS) == {"digits-dit", *ARCHS} and len(ARCHS) == 3
    with pytest.raises(KeyError, match="unknown zoo model"):
        load_zoo_model("nope")


def test_digits_dit_is_the_embedded_model_unchanged():
    from comfy_meancache.flowmodel import decode, load_embedded_model

    zoo, embedded = load_zoo_model("digits-dit"), load_embedded_model()
    weights = zip(zoo.net.state_dict().values(), embedded.net.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)  # equal, not identical: other tests clear the loader cache
    assert zoo.latent_shape == (1, 16, 16) and zoo.null_label == 10
    x, y = sample_noise(2, seed=6), torch.tensor([3, 10])
    assert torch.equal(zoo.velocity(x, 0.5, y, cfg=4.0), embedded.velocity(x, 0.5, y, cfg=4.0))
    assert torch.equal(zoo.decode(x), decode(x))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_loads_offline_from_a_small_shipped_file(name, no_network):
    path = ARCHS[name].weights_path
    assert path.is_file() and path.stat().st_size < 2_600_000
    m = load_zoo_weights(name)
    assert m.name == name
    cfg = m.config
    assert m.latent_shape == (cfg.in_channels, cfg.image_size, cfg.image_size)


def test_declared_shapes(model):
    c, h, w = model.latent_shape
    assert model.null_label == model.num_classes >= 2
    x = sample_noise(3, seed=1, shape=model.latent_shape)
    v = model.velocity(x, 0.7, torch.tensor([0, 1, model.null_label]), cfg=3.0)
    assert v.shape == x.shape and v.dtype == x.dtype
    img = model.decode(x)
    assert img.ndim == 4 and img.shape[0] == 3 and img.shape[1] in (1, 3) and img.dtype == torch.float32
    assert 0.0 <= img.min().item() and img.max().item() <= 1.0


def test_deterministic(model):
    x, y = sample_noise(2, seed=2, shape=model.latent_shape), torch.tensor([0, 1])
    assert torch.equal(model.velocity(x, 0.5, y, cfg=4.0), model.velocity(x, 0.5, y, cfg=4.0))
    assert torch.equal(sample_noise(2, seed=2, shape=model.latent_shape), x)


def test_cfg_one_is_the_conditional_prediction(model):
    x, y = sample_noise(3, seed=3, shape=model.latent_shape), torch.tensor([1, 0, model.null_label])
    with torch.no_grad():
        expected = model.net(x, torch.full((3,), 0.4), y)
    assert torch.equal(model.velocity(x, 0.4, y, cfg=1.0), expected)


def test_guidance_and_denoised_follow_the_conventions(model):
    x, y = sample_noise(2, seed=4, shape=model.latent_shape), torch.tensor([1, 0])
    cond = model.velocity(x, 0.6, y)
    uncond = model.velocity(x, 0.6, torch.full_like(y, model.null_label))
    torch.testing.assert_close(model.velocity(x, 0.6, y, cfg=4.0), uncond + 4 * (cond - uncond), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.denoised(x, 0.6, y, 4.0), x - 0.6 * model.velocity(x, 0.6, y, 4.0))


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_samples_are_finite_and_differ_between_classes(model, cfg):
    x0, _ = class_samples(model, cfg)
    assert torch.isfinite(x0).all()
    assert x0.abs().max().item() < 3.0  # near the [-1, 1] data range, not diverging
    # Same noise, different class: a learned conditional field moves the sample.
    for a in range(model.num_classes):
        for b in range(a + 1, model.num_classes):
            rel = (x0[a] - x0[b]).norm() / x0[a].norm()
            assert rel.item() > 0.2, (model.name, cfg, a, b, rel.item())  # measured >= 0.32


def test_guidance_sharpens_classes(model):
    """At cfg 4 each class's samples sit closer to their own class mean than
    to other classes' (leave-one-class-out nearest mean), a check that the
    model learned the classes rather than ignoring the label."""
    x0, _ = class_samples(model, 4.0)
    means = x0.flatten(2).mean(1)  # [K, D]
    d = torch.cdist(x0.flatten(2).flatten(0, 1), means)
    labels = torch.arange(model.num_classes).repeat_interleave(PER_CLASS)
    acc = (d.argmin(1) == labels).float().mean().item()
    assert acc >= 0.75, (model.name, acc)  # measured 0.88-1.0; chance is 1/3 or 1/4


def test_training_is_recorded(model):
    info = model.training
    assert info["steps"] > 0 and info["wall_s"] > 0 and info["torch"]
    assert 0.0 < info["final_train_loss"] < 1.0 and info["null_drop_p"] == 0.1
    if model.name in ARCHS:
        assert info["model"] == model.name and info["params"] == model.num_params()
        assert info["wall_s"] < 480  # the "minutes on one thread" budget


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_data_come_from_package_files_only(name, no_network):
    if name == "photo-unet":
        pytest.importorskip("sklearn", reason="scikit-learn (two of the photos) not installed")
    x, y = ARCHS[name].load_data()
    cfg = ARCHS[name].config_cls()
    assert x.shape[1:] == (cfg.in_channels, cfg.image_size, cfg.image_size) and len(x) == len(y) > 1000
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    assert torch.equal(y.unique(), torch.arange(cfg.num_classes))  # every class present, no null label


def test_train_script_writes_a_loadable_file(tmp_path):
    # terrain-latent: its data need only matplotlib, a runtime dependency.
    from comfy_meancache.flowmodel.zoo import train

    out = tmp_path / "m.safetensors"
    train.main(["--model", "terrain-latent", "--out", str(out), "--steps", "2", "--batch", "8", "--no-eval"])
    m = load_zoo_weights("terrain-latent", out)
    assert m.training["steps"] == 2 and m.training["model"] == "terrain-latent"
    v = m.velocity(sample_noise(2, seed=0, shape=m.latent_shape), 0.5, torch.tensor([1, 2]), cfg=2.0)
    assert torch.isfinite(v).all()
