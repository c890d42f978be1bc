"""Every registered experiment of the bdi chapter at its `full` configuration, run at reduced
count on CPU: catches shape and code-path errors at paper scale without a GPU. CIFAR-10 is
replaced by random tensors of its shape when the files are absent."""
import dataclasses

import pytest
import torch

from gnelib.data import Dataset
from gnelib.runs import bdi as X  # noqa: F401  (registers the experiments)
from gnelib.runs import registry

# field -> reduced value; structural fields (blocks, image, width of conv nets, dataset) stay
REDUCE = {"seeds": 2, "draws": 2, "steps": 2, "n_train": 8, "batch_size": 4, "probes": 2,
          "batch": 2, "eval_every": 2, "grad_every": 1}
SMALL_MLP = {"bdi_mlp_moments": dict(widths=(8, 16), depths=(1, 32)),
             "bdi_selu_moments": dict(widths=(16, 24)),
             "bdi_residual_moments": dict(width=16),
             "bdi_normalized_stack": dict(widths=(16, 32), batches=(8, 16)),
             "bdi_conv_block_moments": dict(widths=(8,), image=16),
             "bdi_serial_gradients": dict(image=16), "bdi_resnet_gradients": dict(image=16)}


def _fake_cifar10(*_, **__):
    g = torch.Generator().manual_seed(0)
    return Dataset("cifar10-shaped", torch.randn(64, 3, 32, 32, generator=g),
                   torch.randint(0, 10, (64,), generator=g), torch.randn(4, 3, 32, 32, generator=g),
                   torch.randint(0, 10, (4,), generator=g), 10)


@pytest.mark.parametrize("name", [n for n in registry.names() if n.startswith("bdi_")])
def test_full_configuration_runs_reduced(name, monkeypatch):
    import gnelib.data
    monkeypatch.setattr(gnelib.data, "cifar10", _fake_cifar10)
    full = registry.make_config(name, "full")
    fields = {f.name for f in dataclasses.fields(full)}
    over = {k: v for k, v in REDUCE.items() if k in fields}
    over.update(SMALL_MLP.get(name, {}))
    cfg = dataclasses.replace(full, **over)
    out = registry.get(name)(cfg)
    assert isinstance(out, dict) and out
