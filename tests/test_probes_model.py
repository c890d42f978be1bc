"""The model probe on blocks that are not functions of one tensor, on random layers, on
in-place activations and pooled heads, within a memory budget, and the parsing of factory
arguments (no transformers needed; see test_probes_hf.py for real-library models)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gnelib
from gnelib.probes import model as pm


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# --arg parsing (issue 15, item 1: "false" turned batch norm on)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("word,value", [("false", False), ("False", False), ("no", False),
                                        ("off", False), ("true", True), ("YES", True), ("on", True)])
def test_arg_booleans_parse_like_set(word, value):
    assert pm.parse_kwargs([f"norm={word}"], pm.vgg) == {"norm": value}


def test_arg_false_really_turns_batch_norm_off():
    model = pm.load_factory("gnelib.probes.model:vgg", pm.parse_kwargs(["norm=false"], pm.vgg))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_arg_literals_strings_and_errors():
    assert pm.parse_kwargs(["depth=3", "init=he", "padding='circular'"], pm.vgg) == \
        {"depth": 3, "init": "he", "padding": "circular"}
    with pytest.raises(pm.ProbeError, match="norm='maybe' is neither a Python literal") as err:
        pm.parse_kwargs(["norm=maybe"], pm.vgg)
    assert err.value.argument == "--arg"
    with pytest.raises(pm.ProbeError, match="unknown keyword 'widht'") as err:
        pm.parse_kwargs(["widht=3"], pm.vgg)
    assert err.value.argument == "--arg"


def test_factory_errors_name_their_cause():
    with pytest.raises(pm.ProbeError, match="rejected its arguments") as err:
        pm.load_factory("gnelib.probes.model:vgg", {"init": "lsuv"})
    assert err.value.argument == "--arg"
    with pytest.raises(pm.ProbeError, match="cannot import module") as err:
        pm.load_factory("no_such_package.models:net")
    assert err.value.argument == "model"


# --------------------------------------------------------------------------------------
# Deterministic probing (issue 15, item 4)
# --------------------------------------------------------------------------------------

def encoder_layer(dropout, seed=0):
    torch.manual_seed(seed)
    return nn.TransformerEncoderLayer(16, 4, 32, dropout=dropout, batch_first=True)


def test_transformer_layer_with_dropout_is_probed_without_it():
    """The same weights with dropout 0.5 and 0.0 give the same probe: the probed copy is
    deterministic (MHA's float dropout, the layer's nn.Dropout modules)."""
    x = torch.randn(2, 5, 16, generator=gen(0))
    noisy, clean = encoder_layer(0.5), encoder_layer(0.0)
    clean.load_state_dict(noisy.state_dict())
    noisy.train()
    assert not torch.equal(noisy(x), noisy(x))  # the user's model does drop out
    a = pm.probe_model(nn.Sequential(noisy), x, probes=8, generator=gen(1))
    b = pm.probe_model(nn.Sequential(clean), x, probes=8, generator=gen(1))
    assert [blk.phi for blk in a.blocks] == [blk.phi for blk in b.blocks]
    assert a.end_to_end == b.end_to_end


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.5, self.training)


def test_functional_dropout_and_attention_dropout_are_off_while_probing():
    x = torch.randn(4, 8, generator=gen(0))
    m = FunctionalDropout().train()
    with pm.deterministic():
        assert torch.equal(m(x), m(x))
        q = torch.randn(1, 2, 3, 4)
        out1 = F.scaled_dot_product_attention(q, q, q, dropout_p=0.9)
        assert torch.equal(out1, F.scaled_dot_product_attention(q, q, q, dropout_p=0.9))
    assert F.dropout(torch.ones(1000), 0.5, True).eq(0).any()  # restored afterwards
    rep = pm.probe_model(nn.Sequential(FunctionalDropout(), FunctionalDropout()), x, probes=4,
                         generator=gen(1))
    assert rep.serial


class Noise(nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)


def test_a_random_layer_is_refused():
    with pytest.raises(pm.ProbeError, match="not deterministic") as err:
        pm.probe_model(nn.Sequential(nn.Linear(4, 4), Noise()), torch.randn(3, 4), probes=4)
    assert err.value.argument == "model"


# --------------------------------------------------------------------------------------
# Blocks with extra arguments and tuple outputs; in-place activations
# --------------------------------------------------------------------------------------

class Masked(nn.Module):
    """(x, mask, scale=...) -> (scale * mask * x, aux): Jacobian diag(scale * mask)."""

    def forward(self, x, mask, scale=1.0):
        return scale * mask * x, {"aux": mask.sum()}


class MaskedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Masked(), Masked()])

    def forward(self, x):
        mask = (torch.arange(x.shape[-1]) % 2).to(x.dtype)
        for layer in self.layers:
            x, _ = layer(x, mask, scale=2.0)
        return x


def test_blocks_with_extra_arguments_and_tuple_outputs():
    x = torch.randn(3, 10, generator=gen(0), dtype=torch.float64)
    rep = pm.probe_model(MaskedNet(), x, probes=64, generator=gen(1))
    assert [b.name for b in rep.blocks] == ["layers.0", "layers.1"] and rep.serial
    for b in rep.blocks:  # J = diag(2 * mask): half the singular values 2, half 0
        assert b.phi == pytest.approx(2.0, abs=4 * b.phi_se)
        assert b.phi2 == pytest.approx(b.phi * 4, rel=1e-12)  # JJᵀJJᵀ = 4 JJᵀ exactly
        assert "other argument" in b.note and "output[0]" in b.note
    assert rep.end_to_end.phi1 == pytest.approx(8.0, abs=4 * rep.end_to_end.phi1_se)
    assert "layers.0: input args[0], 2 other arguments" in pm.format_table(rep)


def test_top_level_inplace_relu_is_probed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True), nn.Linear(6, 6), nn.ReLU(inplace=True))
    x = torch.randn(5, 6, generator=gen(0), dtype=torch.float64)
    model = model.double()
    rep = pm.probe_model(model, x, probes=16, generator=gen(1))
    assert rep.serial and len(rep.blocks) == 4
    relu_in = model[0](x)
    assert rep.blocks[1].phi == pytest.approx((relu_in > 0).double().mean().item(),
                                              abs=4 * rep.blocks[1].phi_se)


# --------------------------------------------------------------------------------------
# The verdict: pooled heads apart, depth judged on the repeated blocks
# --------------------------------------------------------------------------------------

def test_pooled_head_does_not_make_a_cnn_vanish():
    model = pm.vgg(depth=4, width=16, norm=False, init="he", padding="circular", seed=0)
    x = torch.randn(2, 3, 8, 8, generator=gen(0))
    rep = pm.probe_model(model, x, probes=16, generator=gen(1))
    head = rep.blocks[-1]
    assert head.name == "head" and head.role == "edge" and head.phi < 0.05
    assert rep.blocks[0].role == "edge"  # 3 -> 16 channels
    assert [b.role for b in rep.blocks[1:-1]] == ["repeated"] * 3
    assert rep.verdict in ("holds", "first-moment") and rep.basis == "repeated"
    assert "edge blocks reported apart" in rep.explanation


def test_average_pooling_is_one_after_aspect_ratio_normalisation():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 4, 4, generator=gen(0), dtype=torch.float64)
    rep = pm.probe_model(model.double(), x, probes=64, generator=gen(1))
    pool = rep.blocks[1]
    assert pool.phi == pytest.approx(1 / 16, rel=0.3)
    assert pool.phi_norm == pytest.approx(1.0, abs=4 * pool.phi_se * 16) and pool.status == "ok"


# --------------------------------------------------------------------------------------
# Memory: probes in chunks
# --------------------------------------------------------------------------------------

def test_probes_run_in_chunks_within_the_budget(monkeypatch):
    calls = []
    real = pm.jacobian_moments

    def spy(f, x, probes=64, generator=None, **kw):
        calls.append(probes)
        return real(f, x, probes=probes, generator=generator, **kw)

    model = pm.mlp(width=32, depth=3, seed=0).double()
    x = torch.randn(8, 40, generator=gen(0), dtype=torch.float64)
    whole = pm.probe_model(model, x, probes=48, generator=gen(1))
    monkeypatch.setattr(pm, "jacobian_moments", spy)
    small = pm.probe_model(model, x, probes=48, generator=gen(1), max_memory=1_000_000)
    assert min(calls) >= 2 and any(b.chunks > 1 for b in small.blocks)
    assert sum(calls) == 48 * (len(small.blocks) + 1)  # every probe run, in chunks
    assert "chunks" in pm.format_table(small)
    for a, b in zip(whole.blocks, small.blocks):  # same estimator, fewer probes at a time
        assert abs(a.phi - b.phi) <= 4 * math.hypot(a.phi_se, b.phi_se)
        # the combined record keeps every field in place (a positional slip once put phi2's
        # standard error where phi's belongs): same sizes, standard errors of the same size
        assert (b.n_in, b.n_out) == (a.n_in, a.n_out)
        assert 0.6 < b.phi_se / a.phi_se < 1.6 and 0.6 < b.rv_se / a.rv_se < 1.6
    e, f = whole.end_to_end, small.end_to_end
    assert (f.n_in, f.n_out, f.aspect, f.probes) == (e.n_in, e.n_out, e.aspect, 48)
    assert 0.6 < f.phi1_se / e.phi1_se < 1.6 and 0.6 < f.phi2_se / e.phi2_se < 1.6
    with pytest.raises(pm.ProbeError, match="two probes at a time") as err:
        pm.probe_model(model, x, probes=8, max_memory=1000)
    assert err.value.argument == "memory"


def test_input_memory_is_checked_before_anything_is_allocated():
    with pytest.raises(pm.ProbeError, match=r"needs at least .* TB") as err:
        pm.check_input_memory((100000, 100000, 100), available=10**10)
    assert err.value.argument == "--input-shape"
    assert pm.check_input_memory((2, 3), available=10**10) > 0


def test_default_blocks_open_wrappers_of_layer_stacks():
    class Encoder(nn.Module):  # a parameter-free wrapper of a ModuleList, called once
        def __init__(self):
            super().__init__()
            self.layer = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)])

        def forward(self, x):
            for lyr in self.layer:
                x = lyr(x)
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.encoder = Encoder()

        def forward(self, x):
            return self.encoder(self.embed(x))

    rep = pm.probe_model(Net(), torch.randn(3, 4), probes=4, generator=gen(0))
    assert [b.name for b in rep.blocks] == ["embed", "encoder.layer.0", "encoder.layer.1",
                                            "encoder.layer.2"]
    assert rep.serial and gnelib.probes.model.VERDICTS
