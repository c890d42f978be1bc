"""The training progress bar in a captured (non-terminal) log: issue 15, it stayed at 0/60."""
import io

import torch

import gnelib.training as tr
from gnelib.data import gaussian_mixture
from gnelib.nn.mlp import MLP


def test_progress_lines_in_a_captured_log(monkeypatch):
    monkeypatch.setattr(tr, "LOG_INTERVAL", 0.0)
    log = io.StringIO()  # not a terminal
    bar = tr.progress_bar(range(5), total=5, desc="train", stream=log)
    for _ in bar:
        pass
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 2
    assert lines[-1].startswith("train: 100%") and "5/5" in lines[-1]


def test_train_reports_progress_to_a_non_terminal_stderr(capsys):
    data = gaussian_mixture(n_train=200, n_test=50, generator=torch.Generator().manual_seed(0))
    model = MLP(data.input_shape[0], 8, 2, data.num_classes, generator=torch.Generator().manual_seed(0))
    tr.train(model, data, steps=30, batch_size=16, lr=0.05, eval_every=10, progress=True, desc="fit")
    err = capsys.readouterr().err
    assert "fit: 100%" in err and "30/30" in err
