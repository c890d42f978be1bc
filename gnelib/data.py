"""Data sets: MNIST-1D (generated offline), CIFAR-10 (from ``data/``), and a synthetic
Gaussian mixture. Every loader returns a :class:`Dataset` of tensors."""
from __future__ import annotations

import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gnelib.base.errors import check_choice, check_positive_int
from gnelib.base.io import data_dir

__all__ = ["Dataset", "load_dataset", "mnist1d", "cifar10", "gaussian_mixture", "DATASETS",
           "CIFAR10_URL", "CIFAR10_DIR", "CIFAR10_MEAN", "CIFAR10_STD", "teacher_data"]

DATASETS = ("mnist1d", "gaussian_mixture", "cifar10")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Dataset:
    """Train and test tensors of a classification set."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` / ``n_test`` examples (for the smaller profiles)."""
        return Dataset(self.name, self.x_train[:n_train], self.y_train[:n_train],
                       self.x_test[:n_test], self.y_test[:n_test], self.num_classes)


def _atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def mnist1d(root: str | Path | None = None, seed: int | None = None) -> Dataset:
    """MNIST-1D (Greydanus 2020): 4000 train and 1000 test sequences of length 40 in 10
    classes, generated procedurally by the ``mnist1d`` package (no download) and cached as
    ``data/mnist1d/mnist1d[_seed].npz``. Inputs are standardised with the train statistics."""
    from mnist1d.data import get_dataset_args, make_dataset

    root = Path(root) if root is not None else data_dir()
    path = root / "mnist1d" / (f"mnist1d_seed{seed}.npz" if seed is not None else "mnist1d.npz")
    if not path.exists():
        args = get_dataset_args()
        if seed is not None:
            args.seed = seed
        d = make_dataset(args)
        _atomic_save_npz(path, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
    z = np.load(path)
    x, xt = z["x"].astype(np.float32), z["x_test"].astype(np.float32)
    mu, sd = x.mean(), x.std()
    return Dataset("mnist1d", torch.from_numpy((x - mu) / sd), torch.from_numpy(z["y"]).long(),
                   torch.from_numpy((xt - mu) / sd), torch.from_numpy(z["y_test"]).long(), 10)


def gaussian_mixture(n_train: int = 2000, n_test: int = 500, dim: int = 32,
                     classes: int = 4, separation: float = 2.0,
                     generator: torch.Generator | None = None) -> Dataset:
    """A synthetic classification set: class ``k`` is :math:`\\mathcal N(\\mu_k, I)` in
    ``dim`` dimensions, with means :math:`\\mu_k \\sim \\mathcal N(0, (s^2/2) I)`, so two
    class means differ by about ``separation`` per coordinate in root mean square."""
    check_positive_int("dim", dim)
    check_positive_int("classes", classes, minimum=2)
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    means = torch.randn(classes, dim, generator=g) * (separation / (2 ** 0.5))

    def draw(n):
        y = torch.randint(classes, (n,), generator=g)
        return means[y] + torch.randn(n, dim, generator=g), y

    x, y = draw(n_train)
    xt, yt = draw(n_test)
    return Dataset("gaussian_mixture", x, y, xt, yt, classes)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        d = pickle.load(fh, encoding="latin1")
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d["labels"], dtype=np.int64)


def _download_cifar10(root: Path) -> None:
    try:  # torchvision's downloader checks the MD5 when torchvision is importable
        from torchvision.datasets import CIFAR10
        CIFAR10(str(root), train=True, download=True)
        return
    except Exception:  # noqa: BLE001 - torchvision absent or incompatible with this torch
        pass
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    tmp = archive.with_suffix(".part")
    urllib.request.urlretrieve(CIFAR10_URL, tmp)
    tmp.replace(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def cifar10(root: str | Path | None = None, download: bool = False,
            normalize: bool = True) -> Dataset:
    """CIFAR-10 from ``root`` (default ``data/``), in torchvision's on-disk layout
    (``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, pickled dicts).

    torchvision's ``CIFAR10`` class is used when it imports; the PyPI torchvision wheels
    do not load beside the pinned CPU torch, so the same files are otherwise read directly.
    With ``download=True`` missing files are fetched (needs a network).
    """
    root = Path(root) if root is not None else data_dir()
    folder = root / CIFAR10_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not all((folder / n).exists() for n in names):
        if download:
            _download_cifar10(root)
        else:
            raise FileNotFoundError(
                f"CIFAR-10 not found: expected {folder}/data_batch_1..5 and test_batch. "
                f"Put the extracted 'cifar-10-python.tar.gz' ({CIFAR10_URL}) under {root}, "
                "or call gnelib.cifar10(download=True) on a machine with a network.")
    try:
        from torchvision.datasets import CIFAR10
        tr, te = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
        xs, ys = tr.data.transpose(0, 3, 1, 2), np.asarray(tr.targets)
        xt, yt = te.data.transpose(0, 3, 1, 2), np.asarray(te.targets)
    except Exception:  # noqa: BLE001 - torchvision absent or incompatible with this torch
        parts = [_read_cifar_batch(folder / n) for n in names[:5]]
        xs, ys = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        xt, yt = _read_cifar_batch(folder / "test_batch")

    def to_tensor(x):
        t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
        if normalize:
            m = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
            s = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
            t = (t - m) / s
        return t

    return Dataset("cifar10", to_tensor(xs), torch.from_numpy(np.asarray(ys)).long(),
                   to_tensor(xt), torch.from_numpy(np.asarray(yt)).long(), 10)


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load one of :data:`DATASETS` by name."""
    check_choice("dataset", name, DATASETS)
    return {"mnist1d": mnist1d, "gaussian_mixture": gaussian_mixture, "cifar10": cifar10}[name](**kwargs)


def teacher_data(n_train: int = 4096, n_test: int = 1024, dim: int = 64, classes: int = 10,
                 hidden: int = 128, generator: torch.Generator | None = None) -> Dataset:
    """Gaussian inputs :math:`x\\sim\\mathcal N(0, I_{dim})` labelled by the argmax of a random
    two-layer ReLU teacher ``W2 relu(W1 x)`` with He-scaled Gaussian weights."""
    for name, v in (("n_train", n_train), ("n_test", n_test), ("dim", dim), ("hidden", hidden)):
        check_positive_int(name, v)
    check_positive_int("classes", classes, minimum=2)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    w1 = torch.randn(hidden, dim, generator=g) * (2 / dim) ** 0.5
    w2 = torch.randn(classes, hidden, generator=g) * (2 / hidden) ** 0.5
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = (torch.relu(x @ w1.T) @ w2.T).argmax(1)
    return Dataset("teacher", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)
