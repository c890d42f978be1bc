"""The first chapter's `full` configurations are built and run at reduced count on the CPU, so
a shape, memory or code-path error at paper scale shows up here, where no GPU is lent."""
import math

from gnelib.runs import make_config
from gnelib.runs.first_look import gradient_norms_at_init, train_mlp


def test_gradient_norms_at_init_full_width_runs():
    full = make_config("gradient_norms_at_init", "full")
    assert (full.width, full.depth) == (1024, 200)
    # full width and batch; depth and probe count reduced (the code path does not depend on them)
    cfg = make_config("gradient_norms_at_init", "full", {"probes": 2, "depth": 12})
    out = gradient_norms_at_init(cfg)
    assert len(out["phi"]) == cfg.depth and all(math.isfinite(p) for p in out["phi"])


def test_train_mlp_full_configuration_takes_a_step():
    cfg = make_config("train_mlp", "full", {"steps": 2, "eval_every": 1, "n_train": 256})
    out = train_mlp(cfg)
    assert len(out["loss"]) == 2
