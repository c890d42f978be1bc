"""Profiles, devices, seeding, and the results record."""
import json
import os

import pytest
import torch

import gnelib
from gnelib.book import chapter as reporting


def test_unknown_profile_names_the_three():
    with pytest.raises(ValueError, match="profile 'huge'.*'smoke', 'book', 'full'"):
        gnelib.check_profile("huge")
    with pytest.raises(ValueError, match="profile"):
        gnelib.sizes("first_look", "paper")


def test_every_chapter_has_sizes_for_every_profile():
    for chapter, by_profile in gnelib.SIZES.items():
        assert set(by_profile) == set(gnelib.PROFILES), chapter


def test_default_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("GNE_PROFILE", raising=False)
    assert gnelib.default_profile() == "book"
    monkeypatch.setenv("GNE_PROFILE", "smoke")
    assert gnelib.default_profile() == "smoke"
    monkeypatch.setenv("GNE_PROFILE", "nope")
    with pytest.raises(ValueError, match="allowed values"):
        gnelib.default_profile()


def test_devices():
    assert gnelib.get_device("cpu") == torch.device("cpu")
    assert gnelib.get_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device 'tpu'.*'auto', 'cpu', 'cuda'"):
        gnelib.get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            gnelib.get_device("cuda")


def test_seed_everything_reproduces_draws():
    gnelib.seed_everything(5)
    a = torch.randn(3)
    g = gnelib.seed_everything(5)
    assert torch.equal(a, torch.randn(3))
    assert torch.equal(torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="seed"):
        gnelib.seed_everything(-1)


def test_record_writes_every_value_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("GNE_DATA_DIR", str(tmp_path))
    gnelib.setup_chapter("first_look", "smoke", seed=1, device="cpu", style=False)
    gnelib.record("ratio", 0.123456, fmt=".3f")
    gnelib.record("curve", torch.tensor([1.0, 2.0]))
    gnelib.record("bad", float("nan"))
    path = tmp_path / "results" / "smoke" / "first_look.json"
    data = json.loads(path.read_text())
    assert data["meta"]["profile"] == "smoke" and data["meta"]["seed"] == 1
    assert data["values"]["ratio"] == {"value": 0.123456, "text": "0.123"}
    assert data["values"]["curve"] == [1.0, 2.0]
    assert data["values"]["bad"] == "nan"
    assert [p.name for p in path.parent.iterdir()] == ["first_look.json"]  # no temp files left


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "r.json"
    gnelib.atomic_write_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        gnelib.atomic_write_json(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_record_without_a_chapter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(reporting, "_CURRENT", None)
    with pytest.raises(RuntimeError, match="setup_chapter"):
        gnelib.record("x", 1)


def test_models_reject_bad_parameters():
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        gnelib.MLP(4, 4, 0, 2)
    with pytest.raises(ValueError, match="activation 'swish'"):
        gnelib.MLP(4, 4, 2, 2, activation="swish")
    with pytest.raises(ValueError, match="init 'lecun'"):
        gnelib.MLP(4, 4, 2, 2, init="lecun")


def test_inits_have_the_stated_scale():
    g = torch.Generator().manual_seed(0)
    w = torch.empty(400, 400)
    n = w.numel()
    for scheme, var in [("xavier", 1 / 400), ("he", 2 / 400), ("gaussian", 1 / 400)]:
        gnelib.init_weight_(w, scheme, generator=g)
        # sample variance of n Gaussian entries has relative sd sqrt(2/n)
        assert abs(w.var().item() / var - 1) < 4 * (2 / n) ** 0.5, scheme
    gnelib.init_weight_(w, "orthogonal", gain=2 ** 0.5, generator=g)
    assert torch.allclose(w @ w.T, 2 * torch.eye(400), atol=1e-4)
