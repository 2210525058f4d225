"""Shared fixtures. Tests that need the real datasets fail in CI when they are missing, and skip elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsr import data as nsr_data

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_FILES = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte.gz",
    "fashion-mnist": "FashionMNIST/raw/train-images-idx3-ubyte.gz",
    "cora": "Planetoid/Cora/raw/ind.cora.x",
    "citeseer": "Planetoid/CiteSeer/raw/ind.citeseer.x",
    "amazon-photo": "Amazon/Photo/raw/amazon_electronics_photo.npz",
    "amazon-computers": "Amazon/Computers/raw/amazon_electronics_computers.npz",
}


def require(name: str) -> Path:
    """The data root if dataset ``name`` is there; else fail (in CI) or skip with the reason."""
    root = nsr_data.data_root()
    if not (root / _FILES[name]).exists():
        message = f"real dataset {name!r} not found under {root} (set NSR_DATA; see ../shared/data/SOURCES.md)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def mnist():
    require("mnist")
    return nsr_data.load("mnist")


@pytest.fixture
def imagenet_folder(tmp_path):
    """An ImageNet-layout folder (train/ and val/) made of the 10-image ImageNet sample."""
    sample = nsr_data.data_root() / "ImageNetSample"
    if not sample.exists():
        pytest.skip("ImageNetSample not under NSR_DATA")
    (tmp_path / "train").symlink_to(sample.resolve())
    (tmp_path / "val").symlink_to(sample.resolve())
    return str(tmp_path)
