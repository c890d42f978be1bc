"""Data loaders: CIFAR-10 from files in its own format, MNIST-1D, the Gaussian mixture."""
import pickle

import numpy as np
import pytest
import torch

import gnelib


def write_tiny_cifar(root, n_per_batch=3, seed=0):
    """Write CIFAR-10's python format: pickled dicts with uint8 'data' (N x 3072) and 'labels'."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name.encode(), "data": data, "labels": labels}, fh)
        written[name] = (data, labels)
    return written


def test_cifar10_reads_its_own_format(tmp_path):
    written = write_tiny_cifar(tmp_path)
    ds = gnelib.cifar10(root=tmp_path, normalize=False)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each image row-major
    expected = torch.from_numpy(data[1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(ds.x_train[4], expected)
    assert ds.y_train[3:6].tolist() == labels
    assert ds.y_test.tolist() == written["test_batch"][1]
    normalized = gnelib.cifar10(root=tmp_path)
    mean = torch.tensor(gnelib.data.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(gnelib.data.CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(normalized.x_train[4], (expected - mean) / std)


def test_missing_cifar10_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*download=True"):
        gnelib.cifar10(root=tmp_path)


def test_mnist1d_is_generated_offline_and_cached(tmp_path):
    ds = gnelib.mnist1d(root=tmp_path)
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert set(ds.y_train.unique().tolist()) == set(range(10))
    assert (tmp_path / "mnist1d" / "mnist1d.npz").exists()
    again = gnelib.mnist1d(root=tmp_path)
    assert torch.equal(ds.x_train, again.x_train)
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3


def test_gaussian_mixture_is_seeded_and_separable():
    a = gnelib.gaussian_mixture(200, 50, dim=8, classes=3, generator=torch.Generator().manual_seed(1))
    b = gnelib.gaussian_mixture(200, 50, dim=8, classes=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x_train, b.x_train) and a.num_classes == 3
    with pytest.raises(ValueError, match="classes"):
        gnelib.gaussian_mixture(classes=1)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="dataset 'imagenet'.*'mnist1d'"):
        gnelib.load_dataset("imagenet")
