"""Dataset loading: IDX and CIFAR-10 readers, folder layouts, errors, batching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nembed_compress import datasets
from nembed_compress.datasets import DATASETS, ImageDataset, load_dataset, read_idx
from nembed_compress.errors import DatasetError, UsageError

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# ---------------------------------------------------------------------------
# Synthetic files


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist_split(
    folder: Path, split: str = "train", n: int = 12, *, compress: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)
    return images, labels


def write_cifar_split(
    folder: Path, split: str = "test", n: int = 6, *, protocol: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    all_data, all_labels = [], []
    for name in names:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {"batch_label": name, "labels": labels, "data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        all_data.append(data)
        all_labels += labels
    return np.concatenate(all_data), np.array(all_labels)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """No test sees the user's cache, data folder or Debian copy, and none may download."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEMBED_DATA_DIR", raising=False)
    monkeypatch.setenv("NEMBED_OFFLINE", "1")
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


# ---------------------------------------------------------------------------
# Folder layouts


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_mnist_loads_from_the_torchvision_layout(tmp_path, compress):
    images, labels = write_mnist_split(tmp_path / "MNIST" / "raw", "test", compress=compress)

    ds = load_dataset("mnist", "test", tmp_path)

    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels).long())
    assert (ds.name, ds.split, len(ds)) == ("mnist", "test", 12)


def test_mnist_loads_from_files_directly_in_the_folder(tmp_path):
    write_mnist_split(tmp_path, "train", compress=False)
    assert len(load_dataset("mnist", "train", tmp_path)) == 12


@pytest.mark.parametrize("sub", ["FashionMNIST/raw", "fashion-mnist", "."])
def test_fashion_mnist_loads_from_each_accepted_layout(tmp_path, sub):
    write_mnist_split(tmp_path / sub, "train", n=5)
    ds = load_dataset("fashion-mnist", "train", tmp_path)
    assert ds.images.shape == (5, 1, 28, 28) and ds.name == "fashion-mnist"


def test_fashion_mnist_falls_back_to_the_debian_folder(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist_split(debian, "test", n=4)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)

    ds = load_dataset("fashion-mnist", "test", tmp_path / "empty")

    assert len(ds) == 4


def test_the_environment_variable_names_the_data_folder(tmp_path, monkeypatch):
    write_mnist_split(tmp_path / "elsewhere" / "MNIST" / "raw", "test", n=3)
    monkeypatch.setenv("NEMBED_DATA_DIR", str(tmp_path / "elsewhere"))
    assert len(load_dataset("mnist", "test")) == 3


def test_the_download_cache_is_searched_after_the_data_folder(tmp_path):
    write_mnist_split(datasets.default_cache_dir() / "MNIST" / "raw", "test", n=7)
    assert len(load_dataset("mnist", "test", tmp_path / "empty")) == 7


@pytest.mark.parametrize("sub", ["cifar-10-batches-py", "."])
@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_channel_major_pickled_batches(tmp_path, sub, protocol):
    data, labels = write_cifar_split(tmp_path / sub, "test", protocol=protocol)

    ds = load_dataset("cifar10", "test", tmp_path)

    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    # Row layout: 1024 red values, then green, then blue, each row-major over 32x32.
    assert torch.equal(ds.images[2, 1, 0], torch.from_numpy(data[2, 1024:1056]))
    assert torch.equal(ds.labels, torch.from_numpy(labels))


def test_cifar10_train_split_joins_the_five_batches(tmp_path):
    data, _ = write_cifar_split(tmp_path / "cifar-10-batches-py", "train", n=2)
    ds = load_dataset("cifar10", "train", tmp_path)
    assert len(ds) == 10
    assert torch.equal(ds.images.reshape(10, -1), torch.from_numpy(data))


def test_loading_writes_nothing_into_the_data_folder(tmp_path):
    write_mnist_split(tmp_path / "MNIST" / "raw", "test")
    before = sorted(tmp_path.rglob("*"))
    load_dataset("mnist", "test", tmp_path)
    assert sorted(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------
# Missing data and downloads


def test_a_missing_dataset_offline_lists_every_folder_tried(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "test", tmp_path / "nowhere")

    message = str(info.value)
    assert "t10k-images-idx3-ubyte[.gz]" in message
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert str(datasets.default_cache_dir() / "MNIST" / "raw") in message
    assert "--data-dir" in message


def test_offline_setting_stops_any_download(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("download attempted while offline")

    monkeypatch.setattr(datasets, "_download", fail)
    with pytest.raises(DatasetError, match="Downloading is off"):
        load_dataset("cifar10", "test", tmp_path)


DOWNLOAD_ROOTS: list[Path] = []


def fake_torchvision(monkeypatch, mnist_class) -> None:
    """Put a stand-in torchvision with only datasets.MNIST in place (importing the real one
    takes seconds, and nothing may be downloaded in tests)."""
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.ModuleType("torchvision.datasets")
    torchvision.datasets.MNIST = mnist_class
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)


class FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: 'downloads' by writing tiny raw files."""

    def __init__(self, root, train, download):
        DOWNLOAD_ROOTS.append(Path(root))
        for split in ("train", "test"):
            write_mnist_split(Path(root) / "MNIST" / "raw", split, n=3)


def test_a_download_goes_to_the_cache_and_is_read_with_our_reader(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, FakeTorchvisionMNIST)
    DOWNLOAD_ROOTS.clear()

    ds = load_dataset("mnist", "test", download=True)

    assert len(ds) == 3
    assert DOWNLOAD_ROOTS == [datasets.default_cache_dir()]


def test_a_download_never_goes_into_a_data_folder_that_holds_part_of_the_dataset(
    tmp_path, monkeypatch
):
    fake_torchvision(monkeypatch, FakeTorchvisionMNIST)
    DOWNLOAD_ROOTS.clear()
    write_mnist_split(tmp_path / "data" / "MNIST" / "raw", "train")  # no test split here

    load_dataset("mnist", "test", tmp_path / "data", download=True)

    assert DOWNLOAD_ROOTS == [datasets.default_cache_dir()]


def test_a_download_goes_into_an_empty_writable_data_folder(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, FakeTorchvisionMNIST)
    DOWNLOAD_ROOTS.clear()
    (tmp_path / "data").mkdir()

    assert len(load_dataset("mnist", "test", tmp_path / "data", download=True)) == 3
    assert DOWNLOAD_ROOTS == [tmp_path / "data"]


def test_a_failed_download_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    def unreachable(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    fake_torchvision(monkeypatch, unreachable)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train", tmp_path / "nowhere", download=True)

    message = str(info.value)
    assert "Error downloading" in message and "--data-dir" in message
    assert str(tmp_path / "nowhere") in message


def test_unknown_names_and_splits_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="fashion-mnist"):
        load_dataset("imagenet", "train", tmp_path)
    with pytest.raises(UsageError, match="train, test"):
        load_dataset("mnist", "validation", tmp_path)


def test_files_that_look_like_another_dataset_draw_a_warning(tmp_path, caplog):
    # Fashion-MNIST pixels average 0.286; all-black images are clearly something else.
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10_000, 28, 28)), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10_000), compress=False)
    with caplog.at_level("WARNING", logger="nembed_compress.datasets"):
        load_dataset("fashion-mnist", "test", tmp_path)
    assert "is this the right dataset?" in caplog.text


# ---------------------------------------------------------------------------
# Malformed files


def test_an_incomplete_copy_names_the_missing_file(tmp_path):
    write_mnist_split(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte is missing"):
        load_dataset("mnist", "test", tmp_path)


def test_a_truncated_gzip_file_is_reported_with_its_path(tmp_path):
    write_mnist_split(tmp_path, "test")
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: not a valid gzip"):
        load_dataset("mnist", "test", tmp_path)


def test_truncated_pixel_data_is_reported_with_the_sizes(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(DatasetError, match=r"2352 bytes of data; found 2347 \(the file is trunc"):
        read_idx(path, ndim=3)


def test_trailing_bytes_are_reported(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"xx")
    with pytest.raises(DatasetError, match="trailing bytes"):
        read_idx(path, ndim=1)


def test_a_wrong_magic_number_is_reported(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    with pytest.raises(DatasetError, match=r"expected an IDX magic number 0x00000801.*0x00000803"):
        read_idx(path, ndim=1)


def test_a_file_shorter_than_its_header_is_reported(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DatasetError, match="too short for an IDX header"):
        read_idx(path, ndim=3)


def test_images_and_labels_of_different_counts_are_refused(tmp_path):
    write_mnist_split(tmp_path, "test", n=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), compress=True)
    with pytest.raises(DatasetError, match="5 images but .* 4 labels"):
        load_dataset("mnist", "test", tmp_path)


def test_images_of_the_wrong_size_are_refused(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), compress=True)
    with pytest.raises(DatasetError, match="expected 28x28 images for mnist; found 32x32"):
        load_dataset("mnist", "test", tmp_path)


def test_labels_out_of_range_are_refused(tmp_path):
    write_mnist_split(tmp_path, "test", n=3)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 10, 2]), compress=True)
    with pytest.raises(DatasetError, match=r"0 \.\. 9 for mnist; found 0 \.\. 10"):
        load_dataset("mnist", "test", tmp_path)


def test_a_cifar_batch_without_labels_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DatasetError, match="test_batch: expected a dict with keys 'data' and"):
        load_dataset("cifar10", "test", tmp_path)


class Exploit:
    """A pickle payload that would run a shell command when loaded by plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_cifar_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = {"data": Exploit(marker), "labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))

    with pytest.raises(DatasetError, match=r"refusing to load (posix|os|nt)\.system"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_the_restricted_unpickler_refuses_builtins_that_run_code(tmp_path):
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        datasets.RestrictedUnpickler(__import__("io").BytesIO(payload)).load()


# ---------------------------------------------------------------------------
# The dataset in memory


def small_dataset(n: int = 10) -> ImageDataset:
    images = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return ImageDataset(images, torch.arange(n) % 10, name="mnist", split="train")


def test_batches_are_float_pixels_in_0_1_without_normalisation():
    ds = small_dataset(10)
    batches = list(ds.batches(4))

    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == torch.float32 and images.shape == (4, 1, 2, 2)
    assert torch.equal(images, ds.images[:4].float() / 255)
    assert torch.equal(labels, ds.labels[:4])


def test_shuffled_batches_cover_every_example_once_and_repeat_with_a_seed():
    ds = small_dataset(10)

    def order(seed):
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([labels for _, labels in ds.batches(3, shuffle=True, generator=generator)])

    assert sorted(order(0).tolist()) == list(range(10))
    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))


def test_a_limit_caps_the_number_of_examples():
    assert sum(len(labels) for _, labels in small_dataset(10).batches(4, limit=5)) == 5


def test_a_batch_size_below_one_is_refused_at_once():
    with pytest.raises(UsageError, match="batch size must be at least 1; got 0"):
        small_dataset().batches(0)


def test_subset_takes_slices_indices_and_masks():
    ds = small_dataset(10)
    assert ds.subset(slice(2, 5)).labels.tolist() == [2, 3, 4]
    assert ds.subset([7, 1]).labels.tolist() == [7, 1]
    assert ds.subset(ds.labels % 2 == 0).labels.tolist() == [0, 2, 4, 6, 8]
    assert len(ds.subset([])) == 0


def test_split_holdout_is_disjoint_complete_and_repeatable():
    ds = small_dataset(10)
    rest, holdout = ds.split_holdout(3, seed=5)

    assert len(rest) == 7 and len(holdout) == 3
    assert sorted(rest.labels.tolist() + holdout.labels.tolist()) == list(range(10))
    assert holdout.split == "train-holdout" and rest.split == "train"
    assert torch.equal(ds.split_holdout(3, seed=5)[1].labels, holdout.labels)
    with pytest.raises(UsageError, match="between 1 and 9"):
        ds.split_holdout(10)


def test_images_of_the_wrong_dtype_are_refused():
    with pytest.raises(DatasetError, match="uint8 tensor"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), "x", "train")


# ---------------------------------------------------------------------------
# The real datasets, where an offline copy exists


def channel_stats(ds: ImageDataset) -> tuple[list[float], list[float]]:
    pixels = ds.images.float().div_(255).transpose(0, 1).reshape(ds.images.shape[1], -1)
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1).tolist()


def assert_stats_close(ds: ImageDataset, tolerance: float) -> None:
    info = DATASETS[ds.name]
    mean, std = channel_stats(ds)
    for found, expected in zip(mean + std, info.mean + info.std, strict=True):
        assert abs(found - expected) < tolerance, (
            f"{ds.name} {ds.split}: pixel statistic {found:.4f}, expected {expected} "
            f"within {tolerance}"
        )


@pytest.mark.skipif(not (SHARED_DATA / "MNIST").is_dir(), reason="no offline MNIST copy")
def test_the_real_mnist_test_split_has_the_published_shape_and_statistics():
    ds = load_dataset("mnist", "test", SHARED_DATA)
    assert ds.images.shape == (10_000, 1, 28, 28)
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert_stats_close(ds, tolerance=0.005)


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar-10-batches-py").is_dir(), reason="no offline CIFAR-10 copy"
)
def test_the_real_cifar10_test_split_has_the_published_shape_and_statistics():
    ds = load_dataset("cifar10", "test", SHARED_DATA)
    assert ds.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert_stats_close(ds, tolerance=0.006)


REAL_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_DEBIAN.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_debian_fashion_mnist_package_loads_as_a_data_folder():
    ds = load_dataset("fashion-mnist", "test", REAL_DEBIAN)
    assert ds.images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert_stats_close(ds, tolerance=0.005)
