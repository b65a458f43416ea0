"""A learnable synthetic MNIST-shaped dataset, and a model built to solve it.

The class of an image is the position of one bright 6x6 square on dim noise (two rows
of five positions), so a tiny MLP learns it in a few dozen steps, and a working
pipeline scores far above chance while a broken one (wrong normalisation, wrong
weights) shows in the accuracy.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from nembed_compress.datasets import ImageDataset
from nembed_compress.models import build_model
from nembed_compress.spec import ArchSpec

MLP = ArchSpec("fc", (1, 28, 28), (32, 10))


def square_position(label: int) -> tuple[int, int]:
    return 3 + 13 * (label // 5), 1 + 5 * (label % 5)


def square_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images and their uint8 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        row, col = square_position(int(label))
        image[row : row + 6, col : col + 6] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def square_dataset(n: int, seed: int = 0) -> ImageDataset:
    images, labels = square_images(n, seed)
    return ImageDataset(
        torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), "mnist", "train"
    )


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_square_mnist(root: Path, n_train: int = 600, n_test: int = 300) -> Path:
    """The square set as an MNIST folder in torchvision's layout (``MNIST/raw``, gzip IDX)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = square_images(n, seed)
        write_idx_gz(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def square_detector() -> torch.nn.Module:
    """A 784-32-10 MLP built, not trained, to solve the square set.

    Hidden neuron k averages the pixels of square k and output k reads hidden neuron k.
    Small random weights everywhere else make its matrices full rank, as a trained
    model's are.
    """
    torch.manual_seed(0)
    model = build_model(MLP)
    fc1, fc2 = model.layers["fc1"], model.layers["fc2"]
    with torch.no_grad():
        fc1.weight.normal_(0, 0.01)
        fc2.weight.normal_(0, 0.01)
        fc1.bias.fill_(-1.0)
        for k in range(10):
            row, col = square_position(k)
            square = torch.zeros(28, 28)
            square[row : row + 6, col : col + 6] = 1 / 36
            fc1.weight[k] += square.flatten()
            fc2.weight[k, k] += 5.0
    return model


def save_as_user_checkpoint(model, path: Path) -> Path:
    """The state dict a user's own training code would save (plain nn.Linear names)."""
    state = {
        f"{name}.{leaf}": getattr(model.layers[name], leaf).detach().clone()
        for name in ("fc1", "fc2")
        for leaf in ("weight", "bias")
    }
    torch.save(state, path)
    return path
