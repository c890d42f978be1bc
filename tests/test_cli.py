"""The gne command line: bad arguments (one line, exit status 2), run through the store, and
gne probe against direct Jacobian moments."""
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import gnelib
from gnelib.probes import model as pm
from gnelib.runs import registry as experiments
from gnelib.cli import main

BAD = [  # argv, words the one-line message must contain
    (["run", "gradient_norms_at_init", "--profile", "huge"], ["--profile", "'smoke'", "'book'", "'full'"]),
    (["run", "no_such"], ["experiment", "'gradient_norms_at_init'", "'train_mlp'"]),
    (["run", "train_mlp", "--set", "widht=3"], ["widht", "'width'", "'depth'"]),
    (["run", "train_mlp", "--set", "dataset=cifar"], ["dataset", "'mnist1d'", "'gaussian_mixture'"]),
    (["run", "train_mlp", "--set", "width=wide"], ["width", "int"]),
    (["run", "train_mlp", "--device", "tpu"], ["--device", "'cpu'", "'cuda'"]),
    (["sweep", "gradient_norms_at_init", "--grid", "init=he,lsuv"], ["init", "'xavier'", "'he'", "'orthogonal'"]),
    (["sweep", "gradient_norms_at_init", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["sweep", "gradient_norms_at_init", "--grid", "seed=1,2"], ["seed", "--seeds"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,x"], ["--input-shape", "positive integers"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--blocks", "nope"],
     ["--blocks", "'blocks.0'", "'head'"]),
    (["probe", "gnelib.probes.model", "--input-shape", "4,40"], ["model", "package.module:factory"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,41"], ["--input-shape", "(4, 41)"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--mode", "test"], ["--mode", "'train'", "'eval'"]),
    (["frobnicate"], ["list", "run", "probe", "sweep"]),
    # issue 15: one line naming the argument or the real cause, never a traceback
    (["probe", "gnelib.probes.model:vgg", "--arg", "norm=maybe", "--input-shape", "2,3,8,8"],
     ["--arg", "norm", "neither a Python literal"]),
    (["probe", "gnelib.probes.model:vgg", "--arg", "nokey=1", "--input-shape", "2,3,8,8"],
     ["--arg", "unknown keyword 'nokey'", "'depth'"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "100000,100000,100"],
     ["--input-shape", "needs at least", "available"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--tolerance", "inf"], ["--tolerance"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--rv-tolerance", "nan"], ["--rv-tolerance"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--plot", "x.unknownext"],
     ["--plot", "unknownext", "png"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--json", "/nonexistent_dir/x.json"],
     ["--json", "/nonexistent_dir", "does not exist"]),
    (["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--seed", "-5"], ["--seed", ">= 0", "-5"]),
    (["run", "gradient_norms_at_init", "--seed", "-1"], ["--seed", ">= 0", "-1"]),
    (["run", "gradient_norms_at_init", "--set", "width=10000000"], ["--set", "memory", "available"]),
    (["run", "gradient_norms_at_init", "--set", "batch=99999999999999999999"], ["--set", "batch"]),
    (["run", "gradient_norms_at_init", "--set", "batch=9999999999999"], ["--set", "memory"]),
    (["run", "gradient_norms_at_init", "--set", "seed=5", "--seed", "3"], ["--seed", "disagree"]),
    (["run", "bdi_serial_gradients", "--profile", "smoke", "--set", "slope=nan", "--set",
      "activation=leaky_relu"], ["--set", "slope"]),
    (["sweep", "gradient_norms_at_init", "--scheduler", "notaurl"], ["--scheduler", "tcp://HOST:PORT"]),
    (["sweep", "gradient_norms_at_init", "--set", "seed=5", "--seeds", "2"], ["--seeds", "seed"]),
    (["sweep", "gradient_norms_at_init", "--profile", "smoke", "--set", "width=8", "--set", "depth=2",
      "--scheduler", "tcp://127.0.0.1:1"], ["--scheduler", "cannot reach", "127.0.0.1:1"]),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_give_one_line_and_status_2(argv, words, capsys, tmp_path):
    assert main(argv + (["--store", str(tmp_path)] if argv[0] in ("run", "sweep") else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gne"), err
    for w in words:
        assert w in err, (w, err)


MODELS = """
import torch
from torch import nn


def boom():
    raise RuntimeError("factory exploded")


class Nan(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x) * float("nan"))


class Noisy(Nan):
    def forward(self, x):
        return self.b(self.a(x) + torch.rand_like(x))


def net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True))
"""


def test_installed_command_exits_2_on_bad_argument_and_finds_models_in_the_working_directory(tmp_path):
    gne = Path(sys.executable).with_name("gne")
    assert gne.exists(), "gne is not installed: pip install -e ."
    out = subprocess.run([str(gne), "run", "train_mlp", "--profile", "huge"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gne run: error: argument --profile: invalid choice: 'huge' (choose from 'smoke', 'book', 'full')"]
    (tmp_path / "mymodels.py").write_text(MODELS)
    out = subprocess.run([str(gne), "probe", "mymodels:net", "--input-shape", "3,4", "--probes", "4"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "verdict:" in out.stdout


@pytest.mark.parametrize("factory,words", [
    ("boom", ["argument model", "RuntimeError", "factory exploded"]),
    ("Nan", ["argument model", "not finite"]),
    ("Noisy", ["argument model", "not deterministic"]),
])
def test_bad_models_give_one_line_naming_the_cause(factory, words, tmp_path, monkeypatch, capsys):
    (tmp_path / "badmodels.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["probe", f"badmodels:{factory}", "--input-shape", "3,4", "--probes", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--blocks" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_set_seed_is_the_seed_in_run_and_sweep(tmp_path, capsys):
    """Issue 15, item 2: --set seed=5 used to run seed 0 (the --seed default won)."""
    tiny = ["--profile", "smoke", "--set", "width=8", "--set", "depth=2", "--set", "batch=2",
            "--set", "probes=4", "--store", str(tmp_path)]
    assert main(["run", "gradient_norms_at_init", *tiny, "--set", "seed=5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["seed"] == 5
    assert main(["sweep", "gradient_norms_at_init", *tiny, "--set", "seed=7", "--jobs", "1"]) == 0
    capsys.readouterr()
    seeds = sorted(json.loads(p.read_text())["config"]["seed"] for p in tmp_path.rglob("*.json"))
    assert seeds == [5, 7]


def test_key_prints_the_store_key_and_computes_nothing(tmp_path, capsys):
    from gnelib.runs import registry as experiments
    from gnelib.runs.store import Store
    argv = ["run", "gradient_norms_at_init", "--profile", "smoke", "--set", "init=xavier",
            "--set", "seed=5", "--store", str(tmp_path / "store"), "--key"]
    assert main(argv) == 0
    key = capsys.readouterr().out.strip()
    cfg = experiments.make_config("gradient_norms_at_init", "smoke", {"init": "xavier", "seed": 5})
    assert key == Store(tmp_path / "other").key("gradient_norms_at_init", cfg)
    assert main(argv[:-3] + ["--seed", "5", "--key"]) == 0  # --seed and --set seed: one key
    assert capsys.readouterr().out.strip() == key
    assert not (tmp_path / "store").exists()


def test_a_folder_in_place_of_a_record_is_one_line(tmp_path, capsys):
    argv = ["run", "gradient_norms_at_init", "--profile", "smoke", "--store", str(tmp_path)]
    assert main(argv + ["--key"]) == 0
    key = capsys.readouterr().out.strip()
    (tmp_path / "gradient_norms_at_init" / f"{key}.json").mkdir(parents=True)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--store" in err and "folder" in err, err


def test_list_prints_plain_text_and_allowed_values(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "\\" not in out and "R(α)" in out
    assert "xavier, he, orthogonal" in out and "mnist1d, gaussian_mixture" in out


@dataclass(frozen=True)
class FailConfig:
    n: int = 0
    seed: int = 0


@experiments.register("_test_fail", FailConfig)
def _fail(config):
    """Fail for odd n."""
    if config.n % 2:
        raise RuntimeError(f"odd {config.n}")
    return {"n": config.n}


def test_sweep_summary_counts_every_configuration(tmp_path, capsys):
    assert main(["sweep", "_test_fail", "--grid", "n=0,1,3", "--jobs", "1", "--store", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "3 configurations: 0 read back, 1 computed, 2 failed" in out
    assert err.count("failed ") == 2


def test_run_stores_then_reads_back(tmp_path, capsys):
    argv = ["run", "gradient_norms_at_init", "--profile", "smoke", "--set", "width=8",
            "--set", "depth=2", "--set", "batch=2", "--set", "probes=4", "--seed", "2",
            "--store", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "stored in" in first
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1
    assert main(argv) == 0
    assert "read back from" in capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["config"]["seed"] == 2 and rec["config"]["width"] == 8
    assert list(tmp_path.rglob("*.json")) == files


def test_probe_agrees_with_direct_jacobian_moments(tmp_path, capsys):
    out = tmp_path / "probe.json"
    plot = tmp_path / "probe.png"
    argv = ["probe", "gnelib.probes.model:mlp", "--input-shape", "4,40", "--arg", "width=16",
            "--arg", "depth=3", "--dtype", "float64", "--probes", "64", "--seed", "5",
            "--json", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "verdict:" in table and "blocks.2" in table
    assert plot.stat().st_size > 0
    rep = json.loads(out.read_text())
    # the same model and input, as documented: factory(**args), x ~ N(0, I) from the seed
    model = pm.mlp(width=16, depth=3).double()
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    names = ["blocks.0", "blocks.1", "blocks.2", "head"]
    assert [b["name"] for b in rep["blocks"]] == names and rep["serial"]
    h = x
    for b, name in zip(rep["blocks"], names):
        mod = model.get_submodule(name)
        exact = gnelib.jacobian_moments(mod, h, exact=True)
        assert abs(b["phi"] - exact.phi1) <= 4 * b["phi_se"], name
        assert abs(b["phi2"] - exact.phi2) <= 4 * b["phi2_se"], name
        assert b["status"] == ("ok" if abs(b["phi"] - 1) <= 0.25 else
                               "explodes" if b["phi"] > 1 else "vanishes")
        h = mod(h).detach()
    e2e = gnelib.jacobian_moments(model, x, exact=True)
    assert abs(rep["end_to_end"]["phi"] - e2e.phi1) <= 4 * rep["end_to_end"]["phi_se"]
    prod = 1.0
    for b in rep["blocks"]:
        prod *= b["phi"]
    assert rep["product"] == pytest.approx(prod, rel=1e-12)


def test_probe_copies_the_model_and_freezes_batch_norm_statistics():
    model = pm.vgg(depth=2, width=4, norm=True)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = pm.probe_model(model, x, probes=8, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [b.name for b in rep.blocks] == ["block1", "block2", "head"] and rep.serial
    assert rep.verdict in pm.VERDICTS
