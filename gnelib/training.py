"""One training loop for every chapter: SGD with momentum and weight decay on any model
and any :class:`~gnelib.data.Dataset`, with a progress bar and divergence recorded, never
raised."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from gnelib.data import Dataset
from gnelib.base.errors import check_positive, check_positive_int

__all__ = ["History", "train", "evaluate", "progress_bar"]

#: Seconds between two progress lines when the output is not a terminal (a captured log).
LOG_INTERVAL = 10.0


class _Lines:
    """A file for tqdm that turns each redraw (``\r`` + bar) into a line of its own, so a
    captured log (not a terminal) shows the progress instead of one overwritten line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress_bar(iterable=None, total: int | None = None, desc: str = "", disable: bool = False,
                 stream=None, **kwargs):
    """A tqdm progress bar on ``stream`` (default ``sys.stderr``). On a terminal it redraws
    in place and disappears when done; elsewhere (a log file, a notebook's captured stream) it
    writes a line at most every :data:`LOG_INTERVAL` seconds and a last line at the end.
    Other keyword arguments go to tqdm."""
    stream = sys.stderr if stream is None else stream
    tty = hasattr(stream, "isatty") and stream.isatty()
    if tty:
        return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, file=stream,
                    **kwargs)
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=True, file=_Lines(stream),
                mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, miniters=1, ncols=100,
                ascii=True, **kwargs)


@dataclass
class History:
    """What :func:`train` returns. ``diverged_step`` is the step whose loss was NaN or inf
    (``None`` if training finished); ``last_finite_loss`` the loss just before it."""

    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    diverged_step: int | None = None
    last_finite_loss: float | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1] if self.test_accuracy else float("nan")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        total_loss += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    model.train(was_training)
    return total_loss / len(x), correct / len(x)


def _param_groups(model: nn.Module, weight_decay: float):
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n in skip]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def train(model: nn.Module, data: Dataset, steps: int, batch_size: int = 64, lr: float = 0.1,
          momentum: float = 0.9, weight_decay: float = 0.0, device: torch.device | str = "cpu",
          generator: torch.Generator | None = None, eval_every: int | None = None,
          progress: bool = True, desc: str = "train", callback=None) -> History:
    """Train ``model`` on ``data`` for ``steps`` SGD steps of ``batch_size`` examples.

    Mini-batches are drawn by reshuffling the training set every epoch with ``generator``.
    Parameters named by ``model.no_weight_decay()`` (timm's convention) get no weight
    decay. Every ``eval_every`` steps (and at the end) the test loss and accuracy are
    recorded. ``callback(step, model, loss)`` is called after every step, for probes. A
    loss that becomes NaN or inf ends training; the step and the last finite loss are
    recorded in the returned :class:`History`.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.SGD(_param_groups(model, weight_decay), lr=lr, momentum=momentum)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(data.x_train)
    bs = min(batch_size, n)
    hist = History()
    eval_every = eval_every or steps
    order, pos = torch.randperm(n, generator=g), 0
    bar = progress_bar(range(1, steps + 1), total=steps, desc=desc, disable=not progress)
    for step in bar:
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs]
        pos += bs
        xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
        loss = nn.functional.cross_entropy(model(xb), yb)
        value = loss.item()
        if not math.isfinite(value):
            hist.diverged_step = step
            hist.last_finite_loss = hist.loss[-1] if hist.loss else None
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.step.append(step)
        hist.loss.append(value)
        if callback is not None:
            callback(step, model, value)
        if step % eval_every == 0 or step == steps:
            tl, acc = evaluate(model, data.x_test, data.y_test, device=device)
            hist.eval_step.append(step)
            hist.test_loss.append(tl)
            hist.test_accuracy.append(acc)
            bar.set_postfix(loss=f"{value:.3f}", acc=f"{acc:.3f}")
    bar.close()
    return hist
