"""Probe any ``torch.nn.Module`` for block dynamical isometry.

A network is read as a serial composition of blocks :math:`f = f_L\\circ\\cdots\\circ f_1`
(Chen et al. 2020, §3). For every block :func:`probe_model` measures, at the input the block
actually receives, :math:`\\phi(J_jJ_j^\\top)` and :math:`\\phi((J_jJ_j^\\top)^2)` with
:func:`~gnelib.probes.jacobian.jacobian_moments`, the relative spectral variance
:math:`\\varphi/\\phi^2 = \\phi((JJ^\\top)^2)/\\phi(JJ^\\top)^2 - 1`, and their standard errors;
then the end-to-end :math:`\\phi(JJ^\\top)` of the whole model. Block dynamical isometry
(Chen et al., Definition 3.1) asks :math:`\\phi(J_jJ_j^\\top)\\approx 1` and
:math:`\\varphi(J_jJ_j^\\top)\\approx 0` for every block; the multiplication theorem says that
for a serial net with (asymptotically) free block Jacobians the end-to-end first moment is
the product of the per-block ones, and relative variances add.

Blocks are, by default, the model's top-level children, with containers opened: a
``ModuleList``/``ModuleDict``, a ``Sequential`` of composite layers, and a parameter-free
wrapper whose only child is a stack (``encoder.layer``, ``encoder.stages.0.layers``) are
replaced by their children, as long as every block found that way is called exactly once
in a forward pass. A list of dotted names (``layer1.0``) chooses the blocks instead.

Blocks of real models are not always functions of one tensor: a transformer layer takes an
attention mask or position embeddings besides the hidden state, and returns a tuple or an
output object. The probe records every call's arguments on the real forward pass and
replays them, varying only the first floating-point argument (the hidden state), and
probes the first floating-point tensor of the output; the table says so for such blocks.
The probed copy of the model is made deterministic: dropout modules and dropout
probabilities stored as numbers (``nn.MultiheadAttention``) are switched off,
``torch.nn.functional`` dropout and the attention kernel's ``dropout_p`` are disabled while
probing, attention runs on the math kernel (the only one with a double backward), and two
forward passes of the input must agree before anything is measured.

The verdict is about depth: it is based on the *repeated* blocks (blocks of the same
structure that map a space to itself). Shape-changing blocks (patch embeddings, pooling,
heads) and one-off blocks are reported apart; for a shape-changing block the table adds
:math:`\\phi(J_jJ_j^\\top)\\,n_\\text{in}/n_\\text{out}`, which is 1 for an average pooling.

Probes are run in chunks small enough for a memory budget (half the available memory by
default), so a large input or many probes do not exhaust the machine.

The module also holds small standard architectures for examples and tests:
:func:`mlp`, :func:`resnet` (a CIFAR-style ResNet of He et al. 2016, with or without
batch normalization) and :func:`vgg`.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import inspect
import math
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from gnelib.base.errors import check_choice, check_positive, check_positive_int
from gnelib.base.memory import available_memory, format_bytes, is_memory_error
from gnelib.nn.init import init_weight_
from gnelib.probes.jacobian import JacobianMoments, jacobian_moments

__all__ = ["BlockProbe", "ModelProbe", "ProbeError", "load_factory", "resolve_factory",
           "parse_shape", "parse_kwargs", "named_blocks", "probe_model", "deterministic",
           "check_input_memory", "format_table", "plot_probe", "mlp", "resnet", "vgg",
           "VERDICTS"]

#: Network-level verdicts of :func:`probe_model`.
VERDICTS = ("holds", "first-moment", "explodes", "vanishes", "mixed")


class ProbeError(ValueError):
    """A model that cannot be probed as asked. ``argument`` names what to blame: a
    command-line argument (``--blocks``, ``--arg``, ``--input-shape``, ...), ``model`` (the
    model itself) or ``memory``."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclass(frozen=True)
class BlockProbe:
    """One block's moments. ``rv`` is the relative spectral variance
    :math:`\\varphi/\\phi^2` and ``rv_se`` its delta-method standard error (covariance of the
    two moment estimates neglected, which makes it conservative). ``phi_norm`` is
    :math:`\\phi\\,n_\\text{in}/n_\\text{out}` (φ itself for a block that keeps its size).
    ``status`` is one of ``ok``, ``explodes``, ``vanishes`` (φ, or ``phi_norm`` for a block
    that changes size, against the tolerance). ``role`` is ``repeated`` (counts for the
    verdict) or ``edge`` (a shape-changing or one-off block, reported apart). ``note`` says
    how a block that is not a function of one tensor was probed; ``chunks`` is the number
    of probe batches the memory budget asked for."""

    name: str
    phi: float
    phi_se: float
    phi2: float
    phi2_se: float
    rv: float
    rv_se: float
    n_in: int
    n_out: int
    status: str
    phi_norm: float = math.nan
    role: str = "repeated"
    note: str = ""
    chunks: int = 1


@dataclass(frozen=True)
class ModelProbe:
    """What :func:`probe_model` returns; see :func:`format_table` for a reading."""

    blocks: list
    end_to_end: JacobianMoments
    product: float
    product_se: float
    rv_sum: float
    rv_sum_se: float
    serial: bool
    tolerance: float
    rv_tolerance: float
    verdict: str
    explanation: str
    input_shape: tuple = field(default=())
    basis: str = "repeated"
    notes: tuple = field(default=())

    @property
    def end_to_end_rv(self) -> float:
        return self.end_to_end.relative_variance

    @property
    def end_to_end_rv_se(self) -> float:
        """Delta-method standard error of the end-to-end relative variance (conservative)."""
        e = self.end_to_end
        return math.hypot(e.phi2_se / e.phi1**2, 2 * e.phi2 * e.phi1_se / e.phi1**3)

    @property
    def rv_z(self) -> float:
        """(measured end-to-end relative variance − sum of the blocks') in standard errors
        (the additive half of the multiplication theorem)."""
        se = math.hypot(self.end_to_end_rv_se, self.rv_sum_se)
        return (self.end_to_end_rv - self.rv_sum) / se if se > 0 else math.inf

    @property
    def product_z(self) -> float:
        """(measured end-to-end φ − product of per-block φ) in units of their combined
        standard error (multiplication theorem check)."""
        se = math.hypot(self.end_to_end.phi1_se, self.product_se)
        return (self.end_to_end.phi1 - self.product) / se if se > 0 else math.inf

    def as_dict(self) -> dict:
        e = self.end_to_end
        return {
            "input_shape": list(self.input_shape), "serial": self.serial,
            "tolerance": self.tolerance, "rv_tolerance": self.rv_tolerance,
            "verdict": self.verdict, "explanation": self.explanation, "basis": self.basis,
            "notes": list(self.notes),
            "blocks": [b.__dict__.copy() for b in self.blocks],
            "end_to_end": {"phi": e.phi1, "phi_se": e.phi1_se, "phi2": e.phi2,
                           "phi2_se": e.phi2_se, "rv": e.relative_variance,
                           "n_in": e.n_in, "n_out": e.n_out},
            "product": self.product, "product_se": self.product_se,
            "rv_sum": self.rv_sum, "rv_sum_se": self.rv_sum_se,
        }


# --------------------------------------------------------------------------------------
# Building the model: factory, keyword arguments, input shape
# --------------------------------------------------------------------------------------

def resolve_factory(spec: str):
    """The callable named by ``"package.module:factory"`` (``factory`` may be dotted, e.g.
    ``Class.method``). Raises :class:`ProbeError` naming the part of the spec that is wrong."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ProbeError("model", f"model must look like 'package.module:factory', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as err:  # noqa: BLE001 - an import can fail in any way
        raise ProbeError("model", f"cannot import module {mod_name!r}: "
                                  f"{type(err).__name__}: {_first_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ProbeError("model", f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ProbeError("model", f"{spec!r} is not callable")
    return obj


def _signature(fn):
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: take them as written
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def _param_kind(param) -> type | None:
    """``bool``/``str`` when a factory parameter is annotated or defaulted as one."""
    ann = param.annotation
    for kind in (bool, str):
        if ann is kind or ann == kind.__name__:
            return kind
    default = param.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, str):
        return str
    return None


_TRUE, _FALSE, _NONE = ("true", "yes", "on"), ("false", "no", "off"), ("none", "null")


def parse_kwargs(items, factory=None) -> dict:
    """``["depth=4", "norm=false"]`` -> ``{"depth": 4, "norm": False}``.

    A value is a Python literal (``4``, ``0.5``, ``(3, 3)``, ``'he'``, ``False``), or one of
    the words ``true/yes/on``, ``false/no/off``, ``none/null`` (any case), the same booleans
    ``gne run --set`` accepts. A bare word is taken as a string only for a parameter of
    ``factory`` that is a string (annotated ``str`` or with a string default). Anything else,
    and a keyword ``factory`` does not accept, is a :class:`ProbeError` naming the argument."""
    params = _keywords(factory)
    out = {}
    for item in items or ():
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ProbeError("--arg", f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise ProbeError("--arg", f"{k!r} is not a keyword name")
        _check_keywords(factory, [k], params)
        kind = _param_kind(params[k]) if params and k in params else None
        try:
            value = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            word = v.strip().lower()
            if kind is str:
                value = v
            elif word in _TRUE:
                value = True
            elif word in _FALSE:
                value = False
            elif word in _NONE:
                value = None
            else:
                raise ProbeError("--arg", f"{k}={v!r} is neither a Python literal nor one of "
                                          f"true/false/yes/no/on/off/none (quote a string: "
                                          f"{k}=\"'{v}'\")") from None
        if kind is bool and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            value = value.strip().lower() in _TRUE
        out[k] = value
    return out


def _keywords(factory) -> dict | None:
    """The keyword parameters of ``factory`` by name, or ``None`` when it takes any."""
    sig = _signature(factory) if factory is not None else None
    if sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n: p for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_keywords(factory, names, params=False) -> None:
    params = _keywords(factory) if params is False else params
    for k in names:
        if params is not None and k not in params:
            raise ProbeError("--arg", f"unknown keyword {k!r}: the factory accepts "
                                      f"{', '.join(repr(a) for a in params) or 'no keywords'}")


def load_factory(spec: str, kwargs: dict | None = None) -> nn.Module:
    """Build a model from ``"package.module:factory"``, calling it with ``kwargs``. Raises
    :class:`ProbeError`: ``--arg`` for an unknown keyword or a ``ValueError``/``TypeError``
    of the factory (its arguments are wrong), ``model`` for anything else."""
    fn = resolve_factory(spec)
    _check_keywords(fn, list(kwargs or {}))
    try:
        model = fn(**(kwargs or {}))
    except (ValueError, TypeError) as err:
        raise ProbeError("--arg", f"{spec} rejected its arguments: {_first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - a user's factory may raise anything
        if is_memory_error(err):
            raise ProbeError("memory", f"building {spec} ran out of memory: {_first_line(err)}") from None
        raise ProbeError("model", f"{spec} raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ProbeError("model", f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``; every entry a positive integer (batch first)."""
    try:
        shape = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ProbeError("--input-shape", f"input-shape must be comma-separated positive integers "
                                          f"such as 1,3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ProbeError("--input-shape", f"input-shape must be comma-separated positive integers "
                                          f"such as 1,3,32,32, got {text!r}")
    return shape


def check_input_memory(shape, dtype=torch.float32, model: nn.Module | None = None,
                       device="cpu", available: int | None = None) -> int:
    """Refuse (:class:`ProbeError` on ``--input-shape``) an input whose probe cannot fit:
    probing needs at least the input, the block activations and two probes' products, about
    eight copies of the input, plus the model's parameters. Returns the estimate (bytes)."""
    numel = math.prod(int(s) for s in shape)
    item = torch.empty((), dtype=dtype).element_size()
    params = sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
    need = 8 * numel * item + 2 * params
    room = available_memory(device) if available is None else available
    if need > room:
        raise ProbeError("--input-shape", f"probing an input of shape {tuple(shape)} "
                         f"({format_bytes(numel * item)} in {str(dtype).replace('torch.', '')}) "
                         f"needs at least {format_bytes(need)} of memory; "
                         f"{format_bytes(room)} is available")
    return need


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------

def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _expansion(module: nn.Module):
    """The children that replace ``module`` as blocks, or ``None`` if it is a block."""
    kids = list(module.named_children())
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return kids
    if not kids:
        return None
    if isinstance(module, nn.Sequential):  # a stack of layers, not conv → norm → relu
        return kids if all(any(True for _ in c.children()) for _, c in kids) else None
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        return None
    if len(kids) == 1 or all(isinstance(c, (nn.ModuleList, nn.ModuleDict)) for _, c in kids):
        return kids
    return None


def _top(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, descending through a chain of single-child wrappers."""
    kids = list(model.named_children())
    prefix = ""
    while len(kids) == 1 and any(True for _ in kids[0][1].children()) and \
            not any(True for _ in model.parameters(recurse=False)):
        prefix, model = _join(prefix, kids[0][0]), kids[0][1]
        kids = [(_join(prefix, n), c) for n, c in model.named_children()]
    return kids


def _tree(model: nn.Module):
    """Every module of the default block tree: ``(name, module, children-or-None)``."""
    out = []

    def walk(name, mod):
        kids = _expansion(mod)
        kids = None if kids is None else [(_join(name, n), c) for n, c in kids]
        out.append((name, mod, kids))
        for n, c in kids or ():
            walk(n, c)

    for n, c in _top(model):
        walk(n, c)
    return out


def named_blocks(model: nn.Module, names=None) -> list[tuple[str, nn.Module]]:
    """The blocks to probe: ``names`` (dotted submodule names), or the default blocks (the
    top-level children with containers opened, see the module docstring; before a forward
    pass this cannot know which are called, :func:`probe_model` does)."""
    if names:
        allowed = [n for n, _ in model.named_modules() if n]
        out = []
        for n in names:
            try:
                check_choice("block", n, allowed)
            except ValueError as err:
                raise ProbeError("--blocks", str(err)) from None
            out.append((n, model.get_submodule(n)))
        return out
    out = [(n, m) for n, m, kids in _tree(model) if kids is None]
    if not out:
        raise ProbeError("--blocks", "model has no child modules: give blocks explicitly")
    return out


def _structure(module: nn.Module):
    """A block's class and the structure of its children that hold parameters (so that an
    identity, an activation or a DropPath does not make two layers different)."""
    return (type(module).__name__, tuple(_structure(c) for c in module.children()
                                         if any(True for _ in c.parameters())))


# --------------------------------------------------------------------------------------
# A deterministic copy
# --------------------------------------------------------------------------------------

_DROPOUT_ATTRS = ("dropout", "dropout_p", "dropout_prob", "attention_dropout", "attn_dropout",
                  "drop_prob", "attention_probs_dropout_prob")


def _prepare(model: nn.Module, mode: str) -> nn.Module:
    """A copy of ``model`` in ``mode``, with every dropout it holds off (modules such as
    ``nn.Dropout`` and DropPath in eval mode, dropout probabilities stored as numbers, as in
    ``nn.MultiheadAttention``, set to 0) and batch-norm running statistics frozen (so probing
    neither changes the user's model nor is prevented from batching)."""
    m = copy.deepcopy(model)
    m.train(mode == "train")
    for sub in m.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) or "drop" in type(sub).__name__.lower():
            sub.eval()
        for attr in _DROPOUT_ATTRS:
            value = sub.__dict__.get(attr)  # plain attributes only, not submodules
            if isinstance(value, float) and value != 0.0:
                setattr(sub, attr, 0.0)
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            sub.track_running_stats = False  # batch statistics, no running-stat update
    return m


def _no_dropout(input, *args, **kwargs):  # noqa: A002 - torch's parameter name
    return input


@contextlib.contextmanager
def deterministic():
    """While active: ``torch.nn.functional``'s dropout functions return their input, and
    ``scaled_dot_product_attention`` runs with ``dropout_p=0`` on the math kernel (the fused
    CPU kernels have no double backward). Covers dropout called inside ``forward`` by models
    that hold no dropout module (transformers' attention). Not thread-safe: it patches
    ``torch.nn.functional`` for the duration."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = []

    def patch(owner, name, new):
        if hasattr(owner, name):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, new)

    sdpa = F.scaled_dot_product_attention

    def sdpa_without_dropout(query, key, value, attn_mask=None, dropout_p=0.0, *args, **kwargs):
        return sdpa(query, key, value, attn_mask, 0.0, *args, **kwargs)

    for name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "feature_alpha_dropout"):
        patch(F, name, _no_dropout)
    for name in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout"):
        patch(torch, name, _no_dropout)
    patch(F, "scaled_dot_product_attention", sdpa_without_dropout)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


# --------------------------------------------------------------------------------------
# Recording calls and replaying them
# --------------------------------------------------------------------------------------

def _is_float_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _output_path(out, path=()):
    """Keys leading to the first floating-point tensor of ``out`` (a tensor, tuple, list,
    dict or output object), or ``None``."""
    if isinstance(out, torch.Tensor):
        return path if out.is_floating_point() else None
    if isinstance(out, Mapping):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        items = list(enumerate(out))
    else:
        return None
    for k, v in items:
        p = _output_path(v, path + (k,))
        if p is not None:
            return p
    return None


def _select(out, path):
    for k in path:
        out = out[k]
    return out


@dataclass
class _Call:
    args: tuple
    kwargs: dict
    where: tuple | None = None  # ("arg", index) or ("kwarg", name) of the probed input
    out_path: tuple | None = None
    out: torch.Tensor | None = None

    @property
    def input(self) -> torch.Tensor:
        kind, key = self.where
        return self.args[key] if kind == "arg" else self.kwargs[key]

    def note(self) -> str:
        kind, key = self.where
        others = sum(1 for i, a in enumerate(self.args) if a is not None and (kind, i) != ("arg", key))
        others += sum(1 for k, v in self.kwargs.items() if v is not None and (kind, k) != ("kwarg", key))
        parts = []
        if others or (kind, key) != ("arg", 0):
            where = f"args[{key}]" if kind == "arg" else f"kwargs[{key!r}]"
            parts.append(f"input {where}" + (f", {others} other argument{'s' * (others != 1)} "
                                               "replayed as recorded" if others else ""))
        if self.out_path:
            parts.append("output" + "".join(f"[{k!r}]" for k in self.out_path) +
                         " (the first tensor of what it returns)")
        return "; ".join(parts)

    def replay(self, mod):
        kind, key = self.where
        args, kwargs, path = self.args, self.kwargs, self.out_path

        def f(t):
            t = t.clone()  # blocks may work in place on their input (ReLU(inplace=True))
            if kind == "arg":
                return _select(mod(*args[:key], t, *args[key + 1:], **kwargs), path)
            return _select(mod(*args, **{**kwargs, key: t}), path)

        return f


def _snapshot(obj):
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, obj)


class _Recorder:
    """Forward pre-hooks and hooks that record each call of the named modules: a copy of
    its arguments when it starts (before an in-place block can change them) and of the
    probed output when it returns."""

    def __init__(self, named):
        self.calls: dict[str, list[_Call]] = {n: [] for n, _ in named}
        self.handles = []
        for name, mod in named:
            self.handles.append(mod.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(mod.register_forward_hook(self._post(name), with_kwargs=True))

    def _pre(self, name):
        def hook(module, args, kwargs):
            self.calls[name].append(_Call(_snapshot(tuple(args)), _snapshot(dict(kwargs))))
        return hook

    def _post(self, name):
        def hook(module, args, kwargs, output):
            call = self.calls[name][-1]
            path = _output_path(output)
            call.out_path = path
            if path is not None:
                call.out = _select(output, path).detach().clone()
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _locate_input(call: _Call):
    for i, a in enumerate(call.args):
        if _is_float_tensor(a):
            return ("arg", i)
    for k, v in call.kwargs.items():
        if _is_float_tensor(v):
            return ("kwarg", k)
    return None


def _resolve_default(model: nn.Module, calls: dict, skipped: list) -> list[tuple[str, nn.Module]]:
    """The finest default blocks that are each called exactly once (uncalled ones are
    dropped and listed in ``skipped``); a container whose children are not is probed whole."""
    tree = {n: (m, kids) for n, m, kids in _tree(model)}
    bad = []
    skipped.clear()

    def resolve(name):
        mod, kids = tree[name]
        if kids is not None:
            parts = [resolve(n) for n, _ in kids]
            if all(p is not None for p in parts):
                return [b for p in parts for b in p]
        if isinstance(mod, (nn.ModuleList, nn.ModuleDict)):
            return None
        n_calls = len(calls.get(name, ()))
        if n_calls == 0 and kids is None:
            skipped.append(name)
            return []
        if n_calls == 1:
            return [(name, mod)]
        bad.append((name, n_calls))
        return None

    out = []
    for name, _ in _top(model):
        part = resolve(name)
        if part is None:
            n, k = bad[-1]
            raise ProbeError("--blocks", f"block {n!r} was called {k} times in one forward pass: "
                                         "give blocks that are each called exactly once")
        out.extend(part)
    if not out:
        raise ProbeError("--blocks", "no child module of the model is called in its forward "
                                     "pass: give blocks explicitly")
    return out


# --------------------------------------------------------------------------------------
# Moments within a memory budget
# --------------------------------------------------------------------------------------

class _CountBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()
        return out


def _activation_bytes(f, x) -> int:
    """Bytes of every tensor one forward pass of ``f`` at ``x`` creates."""
    count = _CountBytes()
    with torch.no_grad(), count:
        f(x)
    return count.total


def _chunked_moments(f, x, probes, generator, budget, what, n_out):
    """:func:`jacobian_moments` in chunks of probes that fit ``budget`` bytes, combined:
    the probe-weighted mean of the chunk estimates, with the standard error of that mean.
    Returns the moments and the number of chunks."""
    act = _activation_bytes(f, x)
    per_probe = 4 * act + (x.numel() + 2 * n_out) * (x.element_size() + 8)
    fixed = 2 * act + x.numel() * x.element_size()
    chunk = min(probes, int((budget - fixed) // per_probe)) if budget > fixed else 0
    if chunk < 2:
        raise ProbeError("memory", f"probing {what} needs about "
                         f"{format_bytes(fixed + 2 * per_probe)} even two probes at a time, "
                         f"more than the budget of {format_bytes(budget)}: use a smaller "
                         "--input-shape (batch) or give more memory")
    if chunk >= probes:
        return jacobian_moments(f, x, probes=probes, generator=generator), 1
    k = probes // chunk
    sizes = [probes // k + (1 if i < probes % k else 0) for i in range(k)]
    parts = [jacobian_moments(f, x, probes=s, generator=generator) for s in sizes]
    w = [s / probes for s in sizes]
    return JacobianMoments(
        phi1=sum(wi * p.phi1 for wi, p in zip(w, parts)),
        phi2=sum(wi * p.phi2 for wi, p in zip(w, parts)), aspect=parts[0].aspect,
        phi1_se=math.sqrt(sum((wi * p.phi1_se) ** 2 for wi, p in zip(w, parts))),
        phi2_se=math.sqrt(sum((wi * p.phi2_se) ** 2 for wi, p in zip(w, parts))),
        n_in=parts[0].n_in, n_out=parts[0].n_out, probes=sum(p.probes for p in parts),
        method=parts[0].method), k


def _measure(f, x, probes, generator, budget, what, n_out):
    try:
        return _chunked_moments(f, x, probes, generator, budget, what, n_out)
    except ProbeError:
        raise
    except Exception as err:  # noqa: BLE001 - named below, with its cause
        cause = err.__cause__ if isinstance(err, ValueError) and err.__cause__ is not None else err
        if is_memory_error(cause):
            raise ProbeError("memory", f"probing {what} ran out of memory: {_first_line(cause)}") from None
        raise ProbeError("model", f"{what} cannot be differentiated at its input "
                                  f"({type(cause).__name__}: {_first_line(cause)})") from None


# --------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------

def _status(phi: float, tol: float) -> str:
    if phi > 1 + tol:
        return "explodes"
    if phi < 1 - tol:
        return "vanishes"
    return "ok"


def _verdict(blocks, tol, rv_tol, product) -> tuple[str, str]:
    up = [b.name for b in blocks if b.status == "explodes"]
    down = [b.name for b in blocks if b.status == "vanishes"]
    spread = [b.name for b in blocks if b.rv > rv_tol]
    if not up and not down and not spread:
        return "holds", (f"block dynamical isometry holds: every block has |φ-1| <= {tol:g} "
                         f"and φ-relative variance <= {rv_tol:g}")
    if not up and not down:
        return "first-moment", (f"first moment holds (every |φ-1| <= {tol:g}), but {len(spread)} "
                                f"of {len(blocks)} blocks have relative variance > {rv_tol:g}")
    if up and down:
        return "mixed", (f"violated: {len(up)} blocks explode, {len(down)} vanish; "
                         f"product of φ = {product:.3g}")
    which, names = ("explodes", up) if up else ("vanishes", down)
    return which, (f"violated: {len(names)} of {len(blocks)} blocks have φ {'>' if up else '<'} "
                   f"{1 + tol if up else 1 - tol:g}; product of φ = {product:.3g}")


def _roles(chosen, calls) -> list[str]:
    """``repeated`` for blocks that keep their input's shape and share their structure with
    another block, ``edge`` for the rest."""
    shapes = {n: (calls[n][0].input.shape == calls[n][0].out.shape) for n, _ in chosen}
    structure = {n: _structure(m) for n, m in chosen}
    count = Counter(structure.values())
    return ["repeated" if shapes[n] and count[structure[n]] >= 2 else "edge" for n, _ in chosen]


# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------

def probe_model(model: nn.Module, x: torch.Tensor, blocks=None, probes: int = 64,
                generator: torch.Generator | None = None, tolerance: float = 0.25,
                rv_tolerance: float = 0.25, mode: str = "train",
                max_memory: int | None = None) -> ModelProbe:
    """Per-block and end-to-end Jacobian moments of ``model`` at input ``x`` and a verdict
    against block dynamical isometry (Chen et al. 2020, Definition 3.1: every block has
    :math:`\\phi(J_jJ_j^\\top)\\approx 1` and :math:`\\varphi(J_jJ_j^\\top)\\approx 0`).

    Each block is probed at the input it receives in one forward pass of ``x`` (forward
    hooks record its arguments, which are replayed with only the first floating-point one
    varied), with ``probes`` Hutchinson probes drawn from ``generator`` (blocks in order,
    then the chain or the whole model), in chunks that fit ``max_memory`` bytes (default:
    half the memory available on ``x``'s device). ``tolerance`` bounds :math:`|\\phi-1|` and
    ``rv_tolerance`` the relative variance :math:`\\varphi/\\phi^2`. The verdict is based on
    the repeated blocks (see :class:`BlockProbe` ``role``); the others are reported apart.
    The product of the per-block φ and the sum of their relative variances are the
    multiplication theorem's predictions of the end-to-end values; ``serial`` says whether
    each block's input is the previous block's output, the condition under which that
    prediction applies; the end-to-end moments are then those of the chain of blocks (from
    the first block's input to the last block's output), otherwise those of the whole model.
    ``mode`` (``train``/``eval``) is the mode the model is probed in; the probed copy is
    deterministic (see :func:`deterministic`), and a model that still gives two different
    outputs for the same input is refused. Raises :class:`ProbeError` naming the cause.
    """
    check_choice("mode", mode, ("train", "eval"))
    check_positive_int("probes", probes, minimum=2)
    check_positive("tolerance", tolerance)
    check_positive("rv_tolerance", rv_tolerance)
    budget = max_memory if max_memory is not None else available_memory(x.device) // 2
    m = _prepare(model, mode)
    devices = [x.device] if x.device.type == "cuda" else []
    with deterministic(), torch.random.fork_rng(devices=devices):
        return _probe(m, x, blocks, probes, generator, tolerance, rv_tolerance, budget, mode)


def _forward(m, x, what):
    try:
        with torch.no_grad():
            return m(x)
    except Exception as err:  # noqa: BLE001 - named: memory, or the input's shape
        if is_memory_error(err):
            raise ProbeError("memory", f"the forward pass at input shape {tuple(x.shape)} ran "
                                       f"out of memory: {_first_line(err)}") from None
        raise ProbeError("--input-shape", f"the model does not accept input of shape "
                                          f"{tuple(x.shape)}{what}: {type(err).__name__}: "
                                          f"{_first_line(err)}") from None


def _probe(m, x, blocks, probes, generator, tolerance, rv_tolerance, budget, mode) -> ModelProbe:
    if blocks:
        chosen = named_blocks(m, blocks)
        watched = chosen
    else:
        watched = [(n, mod) for n, mod, _ in _tree(m)
                   if not isinstance(mod, (nn.ModuleList, nn.ModuleDict))]
    rec = _Recorder(watched)
    try:
        y = _forward(m, x, "")
    finally:
        rec.close()
    skipped: list[str] = []
    chosen = chosen if blocks else _resolve_default(m, rec.calls, skipped)
    y_path = _output_path(y)
    if y_path is None:
        raise ProbeError("model", f"the model returns {type(y).__name__} with no floating-point tensor")
    y_sel = _select(y, y_path)
    if not torch.isfinite(y_sel).all():
        raise ProbeError("model", f"the model's output is not finite (NaN or inf) at a standard "
                                  f"Gaussian input of shape {tuple(x.shape)}")
    again = _select(_forward(m, x, " (second pass)"), y_path)
    diff = (again - y_sel).abs().max().item() if again.shape == y_sel.shape else math.inf
    if not diff <= 1e-5 * (y_sel.abs().max().item() + 1e-30):
        raise ProbeError("model", f"the model is not deterministic in {mode} mode with dropout "
                                  f"switched off: two forward passes of the same input differ by "
                                  f"up to {diff:.3g} (a random layer the probe cannot switch off?); "
                                  "make it deterministic, or probe with --mode eval")
    for name, _ in chosen:
        calls = rec.calls[name]
        if len(calls) != 1:
            raise ProbeError("--blocks", f"block {name!r} was called {len(calls)} times in one "
                                         "forward pass: give blocks that are each called exactly once")
        call = calls[0]
        call.where = _locate_input(call)
        if call.where is None:
            raise ProbeError("--blocks", f"block {name!r} takes no floating-point tensor argument")
        if call.out is None:
            raise ProbeError("--blocks", f"block {name!r} returns no floating-point tensor")
        if not torch.isfinite(call.out).all():
            raise ProbeError("model", f"block {name!r} outputs NaN or inf at the probe's input")
    results = []
    notes = [f"not called in the forward pass, left out: {', '.join(skipped)}"] if skipped else []
    roles = _roles(chosen, rec.calls)
    for (name, mod), role in zip(chosen, roles):
        call = rec.calls[name][0]
        jm, chunks = _measure(call.replay(mod), call.input, probes, generator, budget,
                              f"block {name!r}", call.out.numel())
        rv = jm.relative_variance
        rv_se = math.hypot(jm.phi2_se / jm.phi1**2, 2 * jm.phi2 * jm.phi1_se / jm.phi1**3)
        phi_norm = jm.phi1 * jm.n_in / jm.n_out
        judged = jm.phi1 if jm.n_in == jm.n_out else phi_norm
        note = call.note()
        if note:
            notes.append(f"{name}: {note}")
        results.append(BlockProbe(name, jm.phi1, jm.phi1_se, jm.phi2, jm.phi2_se, rv, rv_se,
                                  jm.n_in, jm.n_out, _status(judged, tolerance), phi_norm, role,
                                  note, chunks))
    calls = [rec.calls[n][0] for n, _ in chosen]
    serial = all(a.out.shape == b.input.shape and torch.equal(a.out, b.input)
                 for a, b in zip(calls[:-1], calls[1:]))
    if serial:  # end to end = the chain of blocks, from the first input to the last output
        steps = [c.replay(mod) for c, (_, mod) in zip(calls, chosen)]

        def chain(t):
            for step in steps:
                t = step(t)
            return t

        e2e, chunks = _measure(chain, calls[0].input, probes, generator, budget,
                               "the chain of blocks", calls[-1].out.numel())
    else:  # no chain: the whole model, and the product is no prediction of it
        e2e, chunks = _measure(lambda t: _select(m(t), y_path), x, probes, generator, budget,
                               "the whole model", y_sel.numel())
    if chunks > 1 or any(b.chunks > 1 for b in results):
        notes.append(f"probes run in chunks to stay within a memory budget of {format_bytes(budget)}")
    product = math.prod(b.phi for b in results)
    product_se = abs(product) * math.sqrt(sum((b.phi_se / b.phi) ** 2 for b in results))
    rv_sum = sum(b.rv for b in results)
    rv_sum_se = math.sqrt(sum(b.rv_se**2 for b in results))
    judged = [b for b in results if b.role == "repeated"]
    basis = "repeated"
    if not judged:
        judged = [b for b in results if b.n_in == b.n_out]
        basis = "size-preserving"
    if not judged:
        judged, basis = results, "all"
    verdict, text = _verdict(judged, tolerance, rv_tolerance, product)
    apart = len(results) - len(judged)
    what = {"repeated": f"the {len(judged)} repeated block{'s' * (len(judged) != 1)}",
            "size-preserving": f"the {len(judged)} block{'s' * (len(judged) != 1)} that keep "
                               "their size (no block repeats)",
            "all": "every block (φ·n_in/n_out where the size changes; no block keeps its size)"}
    text += f" (judged on {what[basis]}"
    text += f"; {apart} edge block{'s' * (apart != 1)} reported apart)" if apart else ")"
    return ModelProbe(results, e2e, product, product_se, rv_sum, rv_sum_se, bool(serial),
                      tolerance, rv_tolerance, verdict, text, tuple(x.shape), basis, tuple(notes))


def format_table(p: ModelProbe, tablefmt: str = "simple") -> str:
    """The probe as a text table (one row per block, then the product and the measured
    end-to-end values), notes on blocks probed through a tuple or extra arguments, and the
    verdict."""
    from tabulate import tabulate

    rows = [[b.name, f"{b.phi:.4g} ± {b.phi_se:.2g}",
             "" if b.n_in == b.n_out else f"{b.phi_norm:.4g}",
             f"{b.rv:.4g} ± {b.rv_se:.2g}", f"{b.n_in}→{b.n_out}", b.role, b.status]
            for b in p.blocks]
    rows.append(["product of blocks", f"{p.product:.4g} ± {p.product_se:.2g}", "",
                 f"{p.rv_sum:.4g} ± {p.rv_sum_se:.2g}", "", "", "(sum of rel. var.)"])
    e = p.end_to_end
    rows.append(["end to end (measured)", f"{e.phi1:.4g} ± {e.phi1_se:.2g}", "",
                 f"{e.relative_variance:.4g} ± {p.end_to_end_rv_se:.2g}", f"{e.n_in}→{e.n_out}",
                 "", ""])
    table = tabulate(rows, headers=["block", "φ(JJᵀ)", "φ·n_in/n_out", "φ-rel. variance", "dims",
                                    "role", "status"], tablefmt=tablefmt)
    serial = ("serial net: end-to-end vs product differ by "
              f"{p.product_z:+.2f} standard errors" if p.serial else
              "blocks are not a serial chain of the model: the product is no prediction")
    notes = "".join(f"note: {n}\n" for n in p.notes)
    return f"{table}\n{serial}\n{notes}verdict: {p.verdict}: {p.explanation}"


def plot_probe(p: ModelProbe, path=None, ax=None, label: str | None = None, color=None):
    """Per-block φ(JJᵀ) (log scale, with ±2 standard errors; edge blocks, which the verdict
    leaves out, as open markers) and the BDI band 1 ± tolerance; saved to ``path`` if
    given. Returns the axes."""
    from gnelib.base.plotting import subplots

    if ax is None:
        fig, ax = subplots(1, 1, width=6.0, height=3.2)
    else:
        fig = ax.figure
    idx = list(range(1, len(p.blocks) + 1))
    line = ax.errorbar(idx, [b.phi for b in p.blocks], yerr=[2 * b.phi_se for b in p.blocks],
                       marker="o", capsize=2, label=label, color=color)
    edge = [(i, b.phi) for i, b in zip(idx, p.blocks) if b.role == "edge"]
    if edge:
        ax.plot(*zip(*edge), "o", mfc="white", color=line[0].get_color(), zorder=3)
    ax.axhspan(1 - p.tolerance, 1 + p.tolerance, color="0.85", zorder=0)
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(idx)
    ax.set_xticklabels([b.name for b in p.blocks], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("block")
    ax.set_ylabel(r"$\phi(J_jJ_j^\top)$ (mean squared singular value)")
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return ax


# --------------------------------------------------------------------------------------
# Small standard architectures
# --------------------------------------------------------------------------------------

def mlp(in_dim: int = 40, width: int = 64, depth: int = 4, out_dim: int = 10,
        init: str = "he", activation: str = "relu", seed: int = 0) -> nn.Module:
    """A ``~gnelib.nn.mlp.MLP`` with seeded weights: the default-argument factory
    ``gnelib.probes.model:mlp`` for ``gne probe``."""
    from gnelib.nn.mlp import MLP
    return MLP(in_dim, width, depth, out_dim, activation=activation, init=init,
               generator=torch.Generator().manual_seed(seed))


class BasicBlock(nn.Module):
    """The residual block of He et al. 2016: ``relu(norm(conv(relu(norm(conv x)))) + s(x))``
    with two 3×3 convolutions; ``s`` is the identity, or a strided 1×1 convolution (and
    norm) when the shape changes. ``norm=False`` replaces batch norm by the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: bool = True):
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = make_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = make_norm(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), make_norm(c_out))

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


def resnet(blocks_per_stage: int = 1, width: int = 16, stages: int = 3, norm: bool = True,
           in_channels: int = 3, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """A CIFAR-style ResNet (He et al. 2016, §4.2: a 3×3 stem, ``stages`` stages of
    ``blocks_per_stage`` basic blocks with widths ``width·2^s``, stride 2 between stages,
    global average pooling and a linear read-out), with batch norm (``norm=True``) or
    without. Convolutions get He (Kaiming normal) weights from a generator seeded by
    ``seed``; batch norm starts at γ = 1, β = 0. The top-level children are the stem,
    each residual block and the head, so ``gne probe`` sees one block per residual block."""
    check_positive_int("blocks_per_stage", blocks_per_stage)
    check_positive_int("width", width)
    check_positive_int("stages", stages)
    gen = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    layers["stem"] = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU())
    c = width
    for s in range(stages):
        for b in range(blocks_per_stage):
            c_out = width * 2**s
            stride = 2 if (s > 0 and b == 0) else 1
            layers[f"block{s + 1}_{b + 1}"] = BasicBlock(c, c_out, stride, norm)
            c = c_out
    layers["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    model = nn.Sequential(layers)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            init_weight_(mod.weight, "he", generator=gen)
        elif isinstance(mod, nn.Linear):
            init_weight_(mod.weight, "xavier", generator=gen)
            nn.init.zeros_(mod.bias)
    return model


def vgg(depth: int = 6, width: int = 16, norm: bool = True, init: str = "default",
        padding: str = "zeros", in_channels: int = 3, num_classes: int = 10,
        seed: int = 0) -> nn.Sequential:
    """A plain VGG-style CNN (Simonyan & Zisserman 2015): ``depth`` blocks
    ``conv3×3 → [BatchNorm] → ReLU`` of ``width`` channels, then global average pooling and
    a linear read-out. ``init="default"`` keeps PyTorch's default initialisation
    (Kaiming-uniform with :math:`a=\\sqrt5`, weight variance :math:`1/(3\\,\\text{fan-in})`),
    what a model gets when nobody chooses; ``"he"`` uses He (Kaiming normal) weights, drawn
    from a generator seeded by ``seed``. ``padding`` is the convolutions' padding mode
    (``zeros``, the usual, or ``circular``, which makes every position see all nine taps).
    Top-level children: ``block1..block<depth>`` and ``head``."""
    check_positive_int("depth", depth)
    check_positive_int("width", width)
    check_choice("init", init, ("default", "he"))
    check_choice("padding", padding, ("zeros", "circular"))
    gen = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    c = in_channels
    for i in range(depth):
        layers[f"block{i + 1}"] = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=False, padding_mode=padding),
            nn.BatchNorm2d(width) if norm else nn.Identity(), nn.ReLU())
        c = width
    layers["head"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
    model = nn.Sequential(layers)
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if init == "he" and isinstance(mod, nn.Conv2d):
                init_weight_(mod.weight, "he", generator=gen)
            else:  # PyTorch's default: U(-b, b), b = 1/sqrt(fan_in), i.e. variance 1/(3 fan_in)
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                with torch.no_grad():
                    mod.weight.uniform_(-bound, bound, generator=gen)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)
    return model
