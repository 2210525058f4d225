"""Dataset loading through the real loaders, fixed splits, and clear errors for absent data."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torchvision

from nsr import data as nsr_data

from conftest import require


def _disjoint(*index_sets):
    seen = set()
    for s in index_sets:
        s = set(s)
        assert not (seen & s)
        seen |= s


def test_mnist_splits(mnist):
    assert mnist.train_x.shape == (50_000, 1, 28, 28) and mnist.val_x.shape == (10_000, 1, 28, 28)
    assert mnist.test_x.shape == (10_000, 1, 28, 28)
    assert float(mnist.train_x.max()) == 1.0 and float(mnist.train_x.min()) == 0.0
    # the official test labels, and train + val = the 60k training labels
    assert torch.bincount(mnist.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    counts = torch.bincount(torch.cat([mnist.train_y, mnist.val_y]))
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    again = nsr_data.load("mnist")
    assert torch.equal(again.val_y, mnist.val_y)  # fixed split
    other = nsr_data.load("mnist", split_seed=1)
    assert not torch.equal(other.val_y, mnist.val_y)
    small = mnist.subset(100, 50, 20)
    assert len(small.train_y) == 100 and len(small.val_y) == 50 and len(small.test_y) == 20


def test_fashion_mnist():
    require("fashion-mnist")
    ds = nsr_data.load("fashion-mnist")
    assert ds.train_x.shape[0] == 50_000 and torch.bincount(ds.test_y).tolist() == [1000] * 10


@pytest.mark.parametrize(
    "name, nodes, features, classes",
    [("cora", 2708, 1433, 7), ("citeseer", 3327, 3703, 6), ("amazon-photo", 7650, 745, 8), ("amazon-computers", 13752, 767, 10)],
)
def test_graphs(name, nodes, features, classes):
    require(name)
    g = nsr_data.load(name, split_seed=3)
    assert (g.num_nodes, g.num_features, g.num_classes) == (nodes, features, classes)
    masks = [g.train_mask, g.val_mask, g.test_mask]
    assert sum(int(m.sum()) for m in masks) == nodes
    assert int(g.train_mask.sum()) == round(0.6 * nodes)
    _disjoint(*(m.nonzero().flatten().tolist() for m in masks))
    assert torch.equal(nsr_data.load(name, split_seed=3).train_mask, g.train_mask)
    assert not torch.equal(nsr_data.load(name, split_seed=4).train_mask, g.train_mask)


def test_digits():
    ds = nsr_data.load("digits")
    assert len(ds.train_y) + len(ds.val_y) + len(ds.test_y) == 1797
    assert ds.train_x.shape[1:] == (1, 8, 8) and float(ds.train_x.max()) <= 1.0


def test_cifar10_loader_on_a_tiny_cifar_format_file(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 10).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    # torchvision checks the md5 of the real files; this test file is not the real one
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    ds = nsr_data.load("cifar10", root=tmp_path)
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.val_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert float(ds.train_x.max()) <= 1.0


def test_wikics_loader_on_a_tiny_file(tmp_path):
    raw = tmp_path / "WikiCS" / "raw"
    raw.mkdir(parents=True)
    n = 10
    blob = {
        "features": [[float(i), 1.0] for i in range(n)],
        "labels": [i % 3 for i in range(n)],
        "links": [[(i + 1) % n] for i in range(n)],
        "train_masks": [[True] * n] * 20,
        "val_masks": [[False] * n] * 20,
        "stopping_masks": [[False] * n] * 20,
        "test_mask": [False] * n,
    }
    (raw / "data.json").write_text(json.dumps(blob))
    g = nsr_data.load("wikics", root=tmp_path)
    assert g.num_nodes == 10 and g.num_classes == 3 and g.train_mask.dim() == 1 and "stopping_mask" not in g


def test_imagenet_imagefolder(imagenet_folder):
    ds = nsr_data.load("imagenet", path=imagenet_folder)
    assert ds.num_classes == 10 and len(ds.train) == 10
    assert ds.val[0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("name", ["mnist", "wikics", "cifar10", "cora"])
def test_absent_dataset_error_names_dataset_path_and_fix(tmp_path, name):
    with pytest.raises(nsr_data.DatasetNotAvailable) as info:
        nsr_data.load(name, root=tmp_path)
    message = str(info.value)
    assert repr(name) in message and str(tmp_path) in message and "To provide it" in message


def test_pubmed_incomplete_here_gives_clear_error(tmp_path):
    with pytest.raises(nsr_data.DatasetNotAvailable, match="pubmed"):
        nsr_data.load("pubmed", root=tmp_path)
    with pytest.raises(nsr_data.DatasetNotAvailable, match="imagenet"):
        nsr_data.load("imagenet", path=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        nsr_data.load("svhn")
