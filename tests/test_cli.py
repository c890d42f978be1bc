"""The gne command line: bad arguments (one line, exit status 2), run through the store, and
gne probe against direct Jacobian moments."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gnelib
from gnelib.probes import model as pm
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
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_give_one_line_and_status_2(argv, words, capsys, tmp_path):
    assert main(argv + (["--store", str(tmp_path)] if argv[0] in ("run", "sweep") else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gne"), err
    for w in words:
        assert w in err, (w, err)


def test_installed_command_exits_2_on_bad_argument():
    gne = Path(sys.executable).with_name("gne")
    assert gne.exists(), "gne is not installed: pip install -e ."
    out = subprocess.run([str(gne), "run", "train_mlp", "--profile", "huge"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gne run: error: argument --profile: invalid choice: 'huge' (choose from 'smoke', 'book', 'full')"]


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
