"""The one place that maps a profile name to the sizes each chapter runs at.

Profiles:

``smoke``
    The whole chapter in well under 90 s on 2 CPU cores; run by ``make test`` in CI.
``book``
    The rendered book on a laptop CPU, at most about 6 minutes per chapter.
``full``
    The papers' scale (paper depths and widths, real CIFAR-10 where a chapter uses it);
    meant for a GPU.

Each chapter owns one entry of :data:`SIZES`; a chapter reads its sizes with
:func:`sizes` (usually through :func:`~gnelib.book.chapter.setup_chapter`).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

from gnelib.base.errors import check_choice

PROFILES = ("smoke", "book", "full")
DEFAULT_PROFILE_ENV = "GNE_PROFILE"

SIZES: dict[str, dict[str, dict]] = {
    # Chapter 1: a first look (the probe's error model, computed inline).
    "first_look": {
        "smoke": dict(se_width=96, se_batch=4, se_probes=16, se_reps=128),
        "book": dict(se_width=256, se_batch=8, se_probes=32, se_reps=1600),
        "full": dict(se_width=512, se_batch=8, se_probes=64, se_reps=2048),
    },
    # Chapter 2: block dynamical isometry (Chen et al.).
    "bdi": {  # inline sizes only; the registered runs' sizes live in gnelib/runs/bdi.py
        "smoke": dict(wishart_n=8, wishart_draws=2000, add_width=32, add_draws=400,
                      conv_channels=(8, 16), conv_grid=8, conv_draws=100, sws_channels=8,
                      probes=16, timing_scale=16, timing_repeats=2, component_n=8, component_mats=64,
                      component_draws=64),
        "book": dict(wishart_n=8, wishart_draws=4000, add_width=64, add_draws=800,
                     conv_channels=(8, 32), conv_grid=8, conv_draws=200, sws_channels=16,
                     probes=64, timing_scale=4, timing_repeats=5, component_n=8, component_mats=64,
                     component_draws=256),
        "full": dict(wishart_n=8, wishart_draws=20000, add_width=128, add_draws=2000,
                     conv_channels=(16, 64), conv_grid=8, conv_draws=400, sws_channels=32,
                     probes=64, timing_scale=1, timing_repeats=20, component_n=8, component_mats=64,
                     component_draws=1024),
    },
    # Chapter 3: variance transmission and PWS (Liu et al.).
    "pws": {
        "smoke": dict(chain_widths=(16, 128), chain_seeds=(1024, 24), chain_depth=8,
                      chain_samples=256, share_ns=(2, 4, 8), share_draws=200000,
                      grad_fan_in=576, grad_filters=4096, grad_samples=256,
                      pws_chain_width=128, pws_chain_depth=10, pws_chain_samples=512,
                      pws_chain_seeds=4, gain_widths=(16, 64), gain_seeds=64, gain_batch=256,
                      split_n=8, split_batch=1024, split_seeds=16,
                      trace_lr=0.45, trace_seeds=4, bs_seeds=2, bs_batches=(2, 8, 32, 128),
                      conv_seeds=2, speed_batch=16, speed_size=16, speed_width=32,
                      speed_depth=4),
        "book": dict(chain_widths=(16, 128), chain_seeds=(768, 48), chain_depth=10,
                     chain_samples=256, share_ns=(2, 4, 8), share_draws=1000000,
                     grad_fan_in=576, grad_filters=4096, grad_samples=256,
                     pws_chain_width=256, pws_chain_depth=20, pws_chain_samples=2048,
                     pws_chain_seeds=8, gain_widths=(32, 128), gain_seeds=128, gain_batch=256,
                     split_n=8, split_batch=1024, split_seeds=32,
                     trace_lr=0.45, trace_seeds=12, bs_seeds=3, bs_batches=(2, 8, 32, 128),
                     conv_seeds=3, speed_batch=64, speed_size=32, speed_width=32,
                     speed_depth=6),
        "full": dict(chain_widths=(16, 512), chain_seeds=(4096, 64), chain_depth=20,
                     chain_samples=1024, share_ns=(2, 4, 8, 16), share_draws=4000000,
                     grad_fan_in=576, grad_filters=8192, grad_samples=1024,
                     pws_chain_width=512, pws_chain_depth=30, pws_chain_samples=4096,
                     pws_chain_seeds=16, gain_widths=(32, 256), gain_seeds=256, gain_batch=1024,
                     split_n=8, split_batch=4096, split_seeds=64,
                     trace_lr=0.45, trace_seeds=10, bs_seeds=5, bs_batches=(2, 8, 32, 128),
                     conv_seeds=5, speed_batch=64, speed_size=32, speed_width=64,
                     speed_depth=8),
    },
    # Chapter 4: batch normalization without gradient explosion (Meterez et al.).
    "bn": {  # inline sizes only; the registered runs' sizes are in gnelib/runs/bn.py
        "smoke": dict(
            mono_width=24, mono_paths=8, mono_steps=100, mc_widths=[4, 8], mc_draws=6000,
            thm3_widths=[8, 32], thm3_draws=1000, local_widths=[16, 32], local_seeds=24,
            local_depth=100, local_window=[20, 100], onestep_widths=[16], onestep_draws=4000,
            chain_width=32, chain_depth=100, slope_from=20, gauss_windows=[[5, 20], [50, 100]],
            yang_window=[20, 120], rate_window=[10, 90], e2_layer=10,
            d1_batches=[16, 32, 40, 64, 128], d1_draws=20, g5_width=16, g5_depths=[5, 20, 50, 100],
            g5_seeds=8, layer_width=64, layer_batch=8, layer_depth=10, layer_draws=64),
        "book": dict(
            mono_width=24, mono_paths=20, mono_steps=200, mc_widths=[4, 8], mc_draws=20000,
            thm3_widths=[8, 32], thm3_draws=4000, local_widths=[16, 32, 64], local_seeds=60,
            local_depth=150, local_window=[20, 150], onestep_widths=[16, 32],
            onestep_draws=10000, chain_width=100, chain_depth=400, slope_from=200,
            gauss_windows=[[5, 50], [50, 200], [200, 500]], yang_window=[20, 140],
            rate_window=[20, 180], e2_layer=10, d1_batches=[16, 32, 40, 64, 128, 256, 512],
            d1_draws=100, g5_width=32, g5_depths=[5, 20, 50, 100, 200, 500], g5_seeds=8,
            layer_width=64, layer_batch=8, layer_depth=20, layer_draws=128),
        "full": dict(
            mono_width=24, mono_paths=50, mono_steps=400, mc_widths=[4, 8, 16], mc_draws=100000,
            thm3_widths=[8, 32, 64], thm3_draws=20000, local_widths=[16, 32, 64, 100],
            local_seeds=40, local_depth=150, local_window=[20, 150],
            onestep_widths=[16, 32, 64], onestep_draws=100000, chain_width=100,
            chain_depth=1000, slope_from=500, gauss_windows=[[5, 50], [50, 200], [200, 500], [500, 1000]],
            yang_window=[40, 360], rate_window=[100, 900], e2_layer=10,
            d1_batches=[16, 32, 40, 64, 128, 256, 512], d1_draws=100, g5_width=100,
            g5_depths=[5, 20, 50, 100, 200, 500, 1000], g5_seeds=10, layer_width=100,
            layer_batch=8, layer_depth=50, layer_draws=256),
    },
    # Appendix: using gnelib on your own model.
    "own_model": {
        "smoke": dict(hw=8, batch=2, width=16, depth=6, probes=16, seeds=2,
                      mlp_width=512, mlp_depth=6, mlp_batch=8, mlp_probes=32, mlp_widths=(256, 512), mlp_seeds=8,
                      se_sets=256, se_probes=8),
        "book": dict(hw=16, batch=4, width=16, depth=8, probes=32, seeds=8,
                     mlp_width=512, mlp_depth=16, mlp_batch=16, mlp_probes=64, mlp_widths=(256, 512), mlp_seeds=20,
                     se_sets=1280, se_probes=8),
        "full": dict(hw=32, batch=8, width=64, depth=16, probes=64, seeds=16,
                     mlp_width=1024, mlp_depth=32, mlp_batch=32, mlp_probes=128, mlp_widths=(512, 1024), mlp_seeds=16,
                     se_sets=2048, se_probes=16),
    },
}


def default_profile() -> str:
    """The profile named by ``$GNE_PROFILE`` (``book`` when unset), validated."""
    return check_profile(os.environ.get(DEFAULT_PROFILE_ENV, "book"))


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise naming the three."""
    check_choice("profile", profile, PROFILES)
    return profile


def sizes(chapter: str, profile: str) -> SimpleNamespace:
    """The inline sizes ``chapter`` computes at under ``profile``, as attributes (empty for a
    chapter whose every size belongs to a registered experiment)."""
    check_profile(profile)
    return SimpleNamespace(**SIZES.get(chapter, {}).get(profile, {}))
