"""gne probe on real models from a real library: Hugging Face transformers' ViT, BERT, ResNet
and ConvNeXt, built from small configurations (nothing downloaded), each with a sanity check
against a case whose answer is known: an identity residual (φ = 1, JJᵀ = I), a linear map
with known singular values, a ReLU of a known input. Skipped when transformers is absent
(the `models` extra; the `test` extra installs it)."""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytest.importorskip("transformers")

from gnelib.cli import main  # noqa: E402
from gnelib.probes import hf  # noqa: E402
from gnelib.probes import model as pm  # noqa: E402

P = 8  # probes: a sanity check needs few


@pytest.fixture(autouse=True)
def one_thread():
    """Small models are latency-bound: one torch thread per test worker (make test runs two)."""
    from gnelib.base.device import torch_threads
    with torch_threads(1):
        yield


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_vit_identity_layer_and_verdict():
    model = hf.vit(layers=3, width=32, heads=4, image=16, patch=4, dropout=0.1)
    with torch.no_grad():  # layer 1 becomes the identity: both residual branches output 0
        for lin in (model.layers[1].attention.o_proj, model.layers[1].mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
    x = torch.randn(2, 3, 16, 16, generator=gen(0))
    rep = pm.probe_model(model, x, probes=P, generator=gen(1))
    names = [b.name for b in rep.blocks]
    assert names == ["embeddings", "layers.0", "layers.1", "layers.2", "layernorm", "pooler"]
    assert [b.role for b in rep.blocks] == ["edge", "repeated", "repeated", "repeated", "edge", "edge"]
    ident = rep.blocks[2]
    assert abs(ident.phi - 1) <= 4 * ident.phi_se
    assert ident.phi2 == pytest.approx(ident.phi, rel=1e-5)  # JJᵀ = I: ‖JJᵀv‖ = ‖Jᵀv‖ exactly
    assert rep.verdict != "vanishes" and rep.basis == "repeated"  # pre-LN layers: φ ≈ 1


def test_bert_linear_block_with_known_singular_values():
    model = hf.bert(layers=2, width=32, heads=4)  # dropout 0.1, probed without it
    dense = model.model.encoder.layer[1].attention.output.dense
    s = torch.linspace(0.5, 1.5, 32)
    g = gen(3)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    with torch.no_grad():
        dense.weight.copy_(u @ torch.diag(s) @ v.T)
    x = torch.randn(2, 6, 32, generator=gen(0))
    blocks = ["model.encoder.layer.0", "model.encoder.layer.1.attention.output.dense",
              "model.encoder.layer.1"]
    rep = pm.probe_model(model, x, blocks=blocks, probes=64, generator=gen(1))
    lin = rep.blocks[1]
    assert abs(lin.phi - (s**2).mean().item()) <= 4 * lin.phi_se
    assert abs(lin.phi2 - (s**4).mean().item()) <= 4 * lin.phi2_se
    assert not rep.serial  # a block inside another: no chain
    default = pm.probe_model(model, x, probes=P, generator=gen(1))
    assert [b.name for b in default.blocks] == ["model.embeddings", "model.encoder.layer.0",
                                                "model.encoder.layer.1", "model.pooler"]
    assert "inputs_embeds" in default.blocks[0].note


def test_resnet_zeroed_residual_is_a_relu_of_a_known_input():
    model = hf.resnet(depths=(2, 2), widths=(8, 16), embedding=8)
    layer = model.encoder.stages[0].layers[1]
    with torch.no_grad():  # residual branch outputs 0: the layer is relu(x) of its input x
        layer.layer[1].normalization.weight.zero_()
        layer.layer[1].normalization.bias.zero_()
    x = torch.randn(2, 3, 16, 16, generator=gen(0))
    seen = {}
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].clone()))
    with torch.no_grad():
        model.train()(x)
    handle.remove()
    rep = pm.probe_model(model, x, probes=P, generator=gen(1))
    block = {b.name: b for b in rep.blocks}["encoder.stages.0.layers.1"]
    active = (seen["x"] > 0).double().mean().item()  # J = diag(1[x > 0])
    assert abs(block.phi - active) <= 4 * block.phi_se
    assert block.phi2 == pytest.approx(block.phi, rel=1e-5)
    pooler = rep.blocks[-1]  # global average pooling: φ = 1/(hw), 1 after normalisation
    assert pooler.name == "pooler" and pooler.role == "edge" and pooler.n_in == 4 * pooler.n_out
    assert abs(pooler.phi_norm - 1) <= 4 * pooler.phi_se * pooler.n_in / pooler.n_out
    assert pooler.status == "ok"
    assert rep.verdict in pm.VERDICTS and "edge blocks reported apart" in rep.explanation


def test_convnext_identity_layer_scale():
    model = hf.convnext(depths=(2, 2), widths=(8, 16), drop_path=0.3)  # DropPath: off in the probe
    with torch.no_grad():
        model.encoder.stages[1].layers[1].layer_scale_parameter.zero_()
    x = torch.randn(2, 3, 16, 16, generator=gen(0))
    rep = pm.probe_model(model, x, probes=P, generator=gen(1))
    block = {b.name: b for b in rep.blocks}["encoder.stages.1.layers.1"]
    assert block.role == "repeated" and abs(block.phi - 1) <= 4 * block.phi_se
    assert block.phi2 == pytest.approx(block.phi, rel=1e-5)
    assert rep.verdict in ("holds", "first-moment")  # layer scale 1e-6: near-identity residuals


@pytest.mark.parametrize("factory,shape,extra", [
    ("vit", "2,3,16,16", []),
    ("bert", "2,6,32", ["--arg", "layers=2"]),
    ("resnet", "2,3,16,16", ["--arg", "widths=(8,16)", "--arg", "embedding=8"]),
    ("convnext", "2,3,16,16", ["--arg", "widths=(8,16)"]),
])
def test_gne_probe_on_transformers_models(factory, shape, extra, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["probe", f"gnelib.probes.hf:{factory}", "--input-shape", shape, "--probes", "4",
                 "--json", str(out), *extra]) == 0
    text = capsys.readouterr().out
    assert "verdict:" in text
    rep = json.loads(out.read_text())
    assert rep["verdict"] in pm.VERDICTS and any(b["role"] == "repeated" for b in rep["blocks"])
    if factory == "vit":
        assert rep["verdict"] != "vanishes"
