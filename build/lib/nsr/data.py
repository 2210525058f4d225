"""Datasets by name, through the real torchvision / torch_geometric / scikit-learn loaders, with fixed splits.

``load(name)`` returns

* for image datasets held in memory (``mnist``, ``fashion-mnist``, ``cifar10``, ``digits``) an
  :class:`ImageSplits` of float tensors (pixels in [0, 1], no normalisation, as in the authors' MLP code);
* for ``imagenet`` an :class:`ImageFolderSplits` of torchvision ``ImageFolder`` datasets (``train/`` and
  ``val/`` under the given path, standard ResNet transforms);
* for graphs (``cora``, ``citeseer``, ``pubmed``, ``amazon-photo``, ``amazon-computers``, ``wikics``) a
  ``torch_geometric.data.Data`` with boolean ``train_mask`` / ``val_mask`` / ``test_mask``.

Splits (fixed and documented):

* MNIST / Fashion-MNIST: 50,000 train / 10,000 validation drawn from the 60,000 training images by a
  permutation seeded with ``split_seed`` (default 0, the same for every training seed, as in the authors'
  code which holds out 10k random images), and the official 10,000 test images.
* CIFAR-10: 45,000 / 5,000 from the training set (seeded as above) and the official test set.
* digits: a stratified 60/20/20 split of the 1,797 images, seeded with ``split_seed``.
* graphs: a random 60/20/20 node split per ``split_seed`` (the experiments pass the run's seed), for every
  graph dataset, official splits ignored, so all datasets are treated alike (the paper does not say which
  splits it used).

The data root is ``$NSR_DATA`` (default ``./data``). A dataset that is absent and cannot be downloaded
raises :class:`DatasetNotAvailable` naming the dataset, the path and how to provide it. Loading takes a
file lock in the root, so parallel processes never race on torchvision's extraction or PyG's processed cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IMAGE_DATASETS",
    "GRAPH_DATASETS",
    "DATASETS",
    "DatasetNotAvailable",
    "ImageSplits",
    "ImageFolderSplits",
    "data_root",
    "load",
    "random_node_split",
]

IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits", "imagenet")
GRAPH_DATASETS = ("cora", "citeseer", "pubmed", "amazon-photo", "amazon-computers", "wikics")
DATASETS = IMAGE_DATASETS + GRAPH_DATASETS

_HOW = {
    "mnist": "put the four MNIST .gz files (train-images-idx3-ubyte.gz, ...) in {root}/MNIST/raw/",
    "fashion-mnist": "put the four Fashion-MNIST .gz files in {root}/FashionMNIST/raw/",
    "cifar10": "put cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/) in {root}/",
    "cora": "put the Planetoid ind.cora.* files in {root}/Planetoid/Cora/raw/",
    "citeseer": "put the Planetoid ind.citeseer.* files in {root}/Planetoid/CiteSeer/raw/",
    "pubmed": "put the eight Planetoid ind.pubmed.* files in {root}/Planetoid/PubMed/raw/",
    "amazon-photo": "put amazon_electronics_photo.npz in {root}/Amazon/Photo/raw/",
    "amazon-computers": "put amazon_electronics_computers.npz in {root}/Amazon/Computers/raw/",
    "wikics": "put WikiCS data.json in {root}/WikiCS/raw/",
    "imagenet": "pass path= a folder with ImageNet train/ and val/ in ImageFolder layout",
}


class DatasetNotAvailable(FileNotFoundError):
    """A named dataset is not on disk and could not be downloaded."""


@dataclass
class ImageSplits:
    """In-memory image dataset: float inputs ``[n, C, H, W]`` in [0, 1] and int64 labels, per split."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(inputs, labels)`` of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None) -> ImageSplits:
        """The first ``train`` / ``val`` / ``test`` samples of each split (splits are already shuffled)."""
        for arg, value in (("train", train), ("val", val), ("test", test)):
            if value is not None and value < 1:
                raise ValueError(f"{arg} must be a positive number of samples, got {value}")
        return ImageSplits(
            self.name,
            self.train_x[:train],
            self.train_y[:train],
            self.val_x[:val],
            self.val_y[:val],
            self.test_x[:test],
            self.test_y[:test],
            self.num_classes,
        )


@dataclass
class ImageFolderSplits:
    """Image datasets read from disk (ImageNet): torchvision datasets per split."""

    name: str
    train: Any
    val: Any
    test: Any
    num_classes: int


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``root``, else ``$NSR_DATA``, else ``./data``."""
    return Path(root if root is not None else os.environ.get("NSR_DATA", "data")).expanduser()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".nsr-data.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _not_available(name: str, root: Path, err: BaseException | None = None) -> DatasetNotAvailable:
    how = _HOW.get(name, "").format(root=root)
    reason = f" ({type(err).__name__}: {err})" if err is not None else ""
    return DatasetNotAvailable(
        f"dataset {name!r} is not available under {root} and could not be downloaded{reason}. "
        f"To provide it, {how} (or set NSR_DATA to a folder that has it)."
    )


def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _torchvision_images(name: str, root: Path, split_seed: int) -> ImageSplits:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        with _locked(root):
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
    except (RuntimeError, OSError) as err:  # URLError is an OSError
        raise _not_available(name, root, err) from err

    def tensors(ds: Any) -> tuple[Tensor, Tensor]:
        data = torch.as_tensor(ds.data)
        if data.dim() == 3:  # MNIST: [n, 28, 28] uint8
            data = data[:, None]
        else:  # CIFAR: [n, 32, 32, 3] uint8
            data = data.permute(0, 3, 1, 2)
        return data.float().div_(255).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

    x, y = tensors(train)
    tx, ty = tensors(test)
    n_val = min(10_000 if name != "cifar10" else 5_000, len(y) // 5)  # (// 5 only matters for tiny test files)
    perm = _permutation(len(y), split_seed)
    val, tr = perm[:n_val], perm[n_val:]
    return ImageSplits(name, x[tr], y[tr], x[val], y[val], tx, ty, 10)


def _digits(split_seed: int) -> ImageSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx = list(range(len(y)))
    tr, rest = train_test_split(idx, test_size=0.4, random_state=split_seed, stratify=bunch.target)
    va, te = train_test_split(rest, test_size=0.5, random_state=split_seed, stratify=bunch.target[rest])
    tr, va, te = (torch.tensor(sorted(i)) for i in (tr, va, te))
    # shuffle within each split with the split seed so that subset() takes a random subset
    tr, va, te = (i[_permutation(len(i), split_seed)] for i in (tr, va, te))
    return ImageSplits("digits", x[tr], y[tr], x[va], y[va], x[te], y[te], 10)


def _imagenet(path: str | os.PathLike[str] | None, root: Path) -> ImageFolderSplits:
    from torchvision import datasets, transforms

    base = Path(path) if path is not None else root / "imagenet"
    missing = [split for split in ("train", "val") if not (base / split).is_dir()]
    if missing:
        raise _not_available("imagenet", base, FileNotFoundError(f"no {', '.join(missing)} folder in {base}"))
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    test_tf = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
    )
    train = datasets.ImageFolder(str(base / "train"), train_tf)
    val = datasets.ImageFolder(str(base / "val"), test_tf)
    # ImageNet's labelled validation set is the test set of the paper (model selection on it, as the
    # authors' code does); there is no separate held-out split.
    return ImageFolderSplits("imagenet", train, val, val, len(train.classes))


def random_node_split(num_nodes: int, seed: int, train: float = 0.6, val: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean train / val / test node masks of a seeded random split (default 60/20/20)."""
    perm = _permutation(num_nodes, seed)
    n_train, n_val = int(round(train * num_nodes)), int(round(val * num_nodes))
    masks = []
    for part in (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]):
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[part] = True
        masks.append(mask)
    return masks[0], masks[1], masks[2]


def _graph(name: str, root: Path, split_seed: int) -> Any:
    from torch_geometric import datasets

    def build() -> Any:
        if name in ("cora", "citeseer", "pubmed"):
            return datasets.Planetoid(str(root / "Planetoid"), {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}[name])
        if name in ("amazon-photo", "amazon-computers"):
            return datasets.Amazon(str(root / "Amazon"), "Photo" if name == "amazon-photo" else "Computers")
        return datasets.WikiCS(str(root / "WikiCS"), is_undirected=True)

    try:
        with _locked(root):
            dataset = build()
    except (RuntimeError, OSError) as err:
        raise _not_available(name, root, err) from err
    data = dataset[0]
    data.train_mask, data.val_mask, data.test_mask = random_node_split(data.num_nodes, split_seed)
    data.num_classes = int(dataset.num_classes)
    data.name = name
    for attr in ("stopping_mask",):  # WikiCS extras that the random split replaces
        if attr in data:
            del data[attr]
    return data


def load(name: str, root: str | os.PathLike[str] | None = None, split_seed: int = 0, path: str | None = None) -> Any:
    """Load dataset ``name`` (see :data:`DATASETS`) with the fixed splits described in the module docstring."""
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    name = name.lower()
    base = data_root(root)
    if name in ("mnist", "fashion-mnist", "cifar10"):
        return _torchvision_images(name, base, split_seed)
    if name == "digits":
        return _digits(split_seed)
    if name == "imagenet":
        return _imagenet(path, base)
    return _graph(name, base, split_seed)
