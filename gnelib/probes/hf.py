"""Real models from a real library: small Hugging Face ``transformers`` models built from a
configuration (nothing is downloaded), as factories for ``gne probe``::

    gne probe gnelib.probes.hf:vit --input-shape 2,3,32,32
    gne probe gnelib.probes.hf:bert --input-shape 2,16,64      # batch, tokens, width
    gne probe gnelib.probes.hf:resnet --input-shape 2,3,32,32 --arg depths=(2,2)
    gne probe gnelib.probes.hf:convnext --input-shape 2,3,32,32

Each factory builds the library's own model class (``ViTModel``, ``BertModel``,
``ResNetModel``, ``ConvNextModel``) with the library's own initialisation, seeded by
``seed``; only the sizes are ours. ``bert`` takes continuous token embeddings (``inputs_embeds``)
instead of token ids, so that a Gaussian input can be probed. Needs the ``models`` extra
(``pip install -c constraints.txt -e '.[models]'``).
"""
from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["vit", "bert", "resnet", "convnext", "InputsEmbeds", "available"]


def available() -> bool:
    """Whether ``transformers`` can be imported."""
    try:
        import transformers  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: either way not usable
        return False
    return True


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build from configurations, never download
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ImportError("transformers is not installed: pip install -c constraints.txt "
                          "-e '.[models]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _build(cls, config, seed: int, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the library initialises from the global RNG
        torch.manual_seed(seed)
        return cls(config, **kwargs)


def _sizes(name: str, values, n: int | None = None) -> list[int]:
    values = [values] if isinstance(values, int) else list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    if n is not None and len(values) != n:
        raise ValueError(f"{name} must have {n} entries (one per stage), got {values!r}")
    return values


def vit(layers: int = 4, width: int = 32, heads: int = 4, image: int = 16, patch: int = 4,
        channels: int = 3, dropout: float = 0.0, pooling: bool = True, seed: int = 0) -> nn.Module:
    """``transformers.ViTModel``: a pre-LN vision transformer of ``layers`` layers of width
    ``width`` on ``image``×``image`` inputs cut into ``patch``×``patch`` patches, MLP ratio 4;
    ``dropout`` for the hidden states and the attention probabilities. Input
    ``(batch, channels, image, image)``."""
    t = _transformers()
    config = t.ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * width, image_size=image, patch_size=patch,
                         num_channels=channels, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)
    return _build(t.ViTModel, config, seed, add_pooling_layer=pooling)


class InputsEmbeds(nn.Module):
    """``model(inputs_embeds=x)``: a text encoder fed continuous token embeddings
    ``(batch, tokens, width)`` instead of token ids."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(inputs_embeds=x)


def bert(layers: int = 4, width: int = 32, heads: int = 4, dropout: float = 0.1,
         seed: int = 0) -> nn.Module:
    """``transformers.BertModel`` (post-LN encoder, MLP ratio 4, BERT's dropout 0.1) fed token
    embeddings: input ``(batch, tokens, width)``, see :class:`InputsEmbeds`."""
    t = _transformers()
    config = t.BertConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * width, vocab_size=64, max_position_embeddings=512,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return InputsEmbeds(_build(t.BertModel, config, seed))


def resnet(depths=(2, 2), widths=(16, 32), embedding: int = 16, layer_type: str = "basic",
           channels: int = 3, seed: int = 0) -> nn.Module:
    """``transformers.ResNetModel`` with ``depths[i]`` residual layers of ``widths[i]``
    channels in stage ``i`` (stride 2 between stages), a ``embedding``-channel stem (7×7
    convolution, max pooling), batch norm, and global average pooling. ``layer_type`` is
    ``basic`` or ``bottleneck``. Input ``(batch, channels, H, W)``."""
    t = _transformers()
    depths = _sizes("depths", depths)
    widths = _sizes("widths", widths, len(depths))
    if layer_type not in ("basic", "bottleneck"):
        raise ValueError(f"unknown layer_type {layer_type!r}: allowed values are 'basic', 'bottleneck'")
    config = t.ResNetConfig(num_channels=channels, embedding_size=embedding, hidden_sizes=widths,
                            depths=depths, layer_type=layer_type)
    return _build(t.ResNetModel, config, seed)


def convnext(depths=(2, 2), widths=(16, 32), channels: int = 3, layer_scale: float = 1e-6,
             drop_path: float = 0.0, seed: int = 0) -> nn.Module:
    """``transformers.ConvNextModel``: a 4×4 patch stem, then stages of ``depths[i]`` ConvNeXt
    layers (7×7 depthwise convolution, LayerNorm, MLP ratio 4, layer scale initialised at
    ``layer_scale``, stochastic depth ``drop_path``) of ``widths[i]`` channels, downsampling
    by 2 between stages; the final LayerNorm acts on the pooled features. Input
    ``(batch, channels, H, W)``."""
    t = _transformers()
    depths = _sizes("depths", depths)
    widths = _sizes("widths", widths, len(depths))
    config = t.ConvNextConfig(num_channels=channels, hidden_sizes=widths, depths=depths,
                              num_stages=len(depths), layer_scale_init_value=layer_scale,
                              drop_path_rate=drop_path)
    return _build(t.ConvNextModel, config, seed)
