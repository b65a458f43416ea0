"""Image classification datasets: MNIST, Fashion-MNIST and CIFAR-10.

Images stay in memory as uint8 tensors of shape (N, C, H, W) and are turned into float32
in [0, 1] one batch at a time. They are not normalised here: every model stores its own
input normalisation (the ``mean`` and ``std`` of :data:`DATASETS`) and applies it itself.

Files are read by this module's own readers (IDX files for the MNIST family, pickled
batches for CIFAR-10), so a read-only offline copy works as it is. torchvision is used only
to download a missing dataset into the cache folder.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import gzip
import importlib
import logging
import os
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError, UsageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
DATA_DIR_ENV = "NEMBED_DATA_DIR"
OFFLINE_ENV = "NEMBED_OFFLINE"
# Where Debian's package dataset-fashion-mnist installs the four gzip IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds and where its files may sit inside a data folder.

    Attributes:
        name: the name used on the command line.
        shape: (C, H, W) of one image.
        classes: number of labels, 0 .. classes - 1.
        mean, std: per-channel pixel statistics on the [0, 1] scale (training split).
        file_format: "idx" (MNIST family) or "cifar-pickle".
        folders: sub-folders of a data folder that may hold the files; "." is the folder itself.
        torchvision_class: the torchvision.datasets class that can download it.
    """

    name: str
    shape: tuple[int, int, int]
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file_format: str
    folders: tuple[str, ...]
    torchvision_class: str


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), "idx", ("MNIST/raw", "."), "MNIST"
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        (1, 28, 28),
        10,
        (0.2860,),
        (0.3530,),
        "idx",
        ("FashionMNIST/raw", "fashion-mnist", "."),
        "FashionMNIST",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "cifar-pickle",
        ("cifar-10-batches-py", "."),
        "CIFAR10",
    ),
}


# ---------------------------------------------------------------------------
# The dataset in memory


@dataclass
class ImageDataset:
    """A labelled image set held as uint8 pixels.

    Attributes:
        images: uint8 tensor (N, C, H, W), pixel values 0 .. 255.
        labels: int64 tensor (N,).
        name: dataset name, a key of :data:`DATASETS` for sets from :func:`load_dataset`.
        split: "train", "test", or a name given by :meth:`split_holdout`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(
                f"{self.name} ({self.split}): images must be a uint8 tensor (N, C, H, W); "
                f"found {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DatasetError(
                f"{self.name} ({self.split}): labels must be an int64 tensor of shape "
                f"({self.images.shape[0]},); found {self.labels.dtype} of shape "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: slice | Sequence[int] | torch.Tensor) -> ImageDataset:
        """The examples at ``indices`` (a slice, integer indices or a boolean mask)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices)
            if indices.numel() == 0:
                indices = indices.long()
            if indices.is_floating_point():
                raise UsageError(f"subset: indices must be integers or booleans; got {indices}")
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        limit: int | None = None,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches: float32 (B, C, H, W) in [0, 1], int64 (B,).

        ``limit`` caps the number of examples (taken after shuffling); the last batch may
        be smaller than ``batch_size``. Pixels are moved to ``device`` as uint8 and
        converted there, which moves a quarter of the bytes a float copy would.
        """
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1; got {batch_size}")
        if limit is not None and limit < 0:
            raise UsageError(f"limit must be 0 or more examples; got {limit}")
        count = len(self) if limit is None else min(limit, len(self))
        order = torch.randperm(len(self), generator=generator)[:count] if shuffle else None
        return self._iter_batches(batch_size, count, order, torch.device(device))

    def _iter_batches(
        self, batch_size: int, count: int, order: torch.Tensor | None, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            index = slice(start, stop) if order is None else order[start:stop]
            images = self.images[index].to(device).float().div_(255.0)
            yield images, self.labels[index].to(device)

    def split_holdout(self, n: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """Split off ``n`` random examples, e.g. to pick the best checkpoint on.

        Returns ``(rest, holdout)``; both keep the original order of their examples, and the
        same ``seed`` gives the same split. The holdout's split name is ``"<split>-holdout"``.
        """
        if not 0 < n < len(self):
            raise UsageError(
                f"{self.name} ({self.split}): a holdout must hold between 1 and "
                f"{len(self) - 1} examples (the set has {len(self)}); got {n}"
            )
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        rest = self.subset(order[n:].sort().values)
        holdout = self.subset(order[:n].sort().values)
        return rest, dataclasses.replace(holdout, split=f"{self.split}-holdout")


# ---------------------------------------------------------------------------
# Finding the files


def default_cache_dir() -> Path:
    """The folder downloads go to: ``~/.cache/nembed/data``."""
    return Path.home() / ".cache" / "nembed" / "data"


def _search_dirs(info: DatasetInfo, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders to look in, in order: the user's data folder, the download cache, Debian's."""
    first = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    roots = [Path(first).expanduser()] if first is not None else []
    roots.append(default_cache_dir())
    dirs = [root / sub if sub != "." else root for root in roots for sub in info.folders]
    if info.name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return list(dict.fromkeys(dirs))


def _required_files(info: DatasetInfo, split: str) -> list[tuple[str, ...]]:
    """For each file a split needs, the names it may have (first found wins)."""
    if info.file_format == "cifar-pickle":
        if split == "train":
            return [(f"data_batch_{i}",) for i in range(1, 6)]
        return [("test_batch",)]
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    # The uncompressed file reads faster; torchvision keeps both after a download.
    return [(stem, f"{stem}.gz") for stem in stems]


def _find_in(folder: Path, required: list[tuple[str, ...]]) -> list[Path] | None:
    """The split's files in ``folder``; None when none is there, an error when some are."""
    found = [
        next((folder / n for n in names if (folder / n).is_file()), None) for names in required
    ]
    if all(path is None for path in found):
        return None
    missing = [names[0] for names, path in zip(required, found, strict=True) if path is None]
    if missing:
        raise DatasetError(
            f"{folder}: incomplete copy, {', '.join(missing)} is missing next to "
            f"{', '.join(p.name for p in found if p is not None)}; "
            "restore the missing files or point --data-dir at a complete copy"
        )
    return found  # type: ignore[return-value]


def _locate(info: DatasetInfo, split: str, dirs: list[Path]) -> list[Path] | None:
    required = _required_files(info, split)
    for folder in dirs:
        if folder.is_dir() and (files := _find_in(folder, required)) is not None:
            return files
    return None


def _describe_search(info: DatasetInfo, split: str, dirs: list[Path]) -> str:
    names = [
        names[0] + ("[.gz]" if len(names) > 1 else "") for names in _required_files(info, split)
    ]
    looked_in = "".join(f"\n  {folder}" for folder in dirs)
    return f"looked for {', '.join(names)} in:{looked_in}"


# ---------------------------------------------------------------------------
# Downloading


def _download_allowed(download: bool | None) -> bool:
    if download is not None:
        return download
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes")


def _download_root(info: DatasetInfo, data_dir: str | os.PathLike | None) -> Path:
    """The user's own folder when it exists, is writable and holds nothing of the dataset;
    the cache folder otherwise (a given data folder may be a read-only shared copy)."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if root.is_dir() and os.access(root, os.W_OK) and not _holds_part_of(info, root):
            return root
    return default_cache_dir()


def _holds_part_of(info: DatasetInfo, root: Path) -> bool:
    """Whether ``root`` has the dataset's sub-folder or any of its files, of either split."""
    if any((root / sub).exists() for sub in info.folders if sub != "."):
        return True
    names = {name for split in SPLITS for names in _required_files(info, split) for name in names}
    return any((root / name).exists() for name in names)


def _download(info: DatasetInfo, root: Path, search: str) -> None:
    logger.info("downloading %s into %s", info.name, root)
    try:
        import torchvision.datasets

        root.mkdir(parents=True, exist_ok=True)
        dataset_class = getattr(torchvision.datasets, info.torchvision_class)
        dataset_class(root=str(root), train=True, download=True)
    except Exception as exc:  # network, disk and archive errors alike end the same way
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        raise DatasetError(
            f"{info.name}: not found on disk, and downloading it into {root} failed: {reason}\n"
            f"Pass --data-dir with a folder holding an offline copy; {search}"
        ) from exc


# ---------------------------------------------------------------------------
# Reading IDX files (MNIST family)

_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is a gzip stream (by content, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path}: not a valid gzip stream ({exc}); the file is truncated or corrupt, "
            "delete it and fetch it again"
        ) from exc


def read_idx(path: str | os.PathLike, ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzip or raw) with ``ndim`` dimensions as uint8.

    The format: two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the number
    of dimensions, then each dimension as a big-endian uint32, then the data.
    """
    path = Path(path)
    data = _read_bytes(path)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(
            f"{path}: {len(data)} bytes, too short for an IDX header of {header_size} bytes; "
            "the file is truncated, fetch it again"
        )
    zero, dtype_code, found_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE or found_ndim != ndim:
        raise DatasetError(
            f"{path}: expected an IDX magic number 0x0000{_IDX_UBYTE:02X}{ndim:02X} "
            f"(unsigned bytes, {ndim} dimensions); found 0x{data[:4].hex().upper()}. "
            "Is this the right file?"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(dims))
    found = len(data) - header_size
    if found != expected:
        problem = "the file is truncated" if found < expected else "trailing bytes follow"
        raise DatasetError(
            f"{path}: header promises {' x '.join(map(str, dims))} = {expected} bytes of data; "
            f"found {found} ({problem}); fetch the file again"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
    return torch.from_numpy(array.copy())


def _read_idx_split(info: DatasetInfo, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = files
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).long()
    if tuple(images.shape[1:]) != info.shape[1:]:
        raise DatasetError(
            f"{images_path}: expected {info.shape[1]}x{info.shape[2]} images for {info.name}; "
            f"found {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files must come from the same release"
        )
    return images.unsqueeze(1), labels  # (N, 1, H, W)


# ---------------------------------------------------------------------------
# Reading CIFAR-10 pickles


@functools.cache
def _safe_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR-10 batch may name: numpy array and dtype rebuilding and a
    few builtin containers that run no code of their own."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    import _codecs

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes at protocol 2 spell them as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("builtins", "__builtin__"):  # Python 3 and Python 2 spellings
        for name in ("set", "frozenset", "bytearray", "bytes", "complex"):
            allowed[(module, name)] = getattr(builtins, name)
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and refuses all else.

    A pickle can name any importable callable and have it called while loading, so an
    ordinary ``pickle.load`` of a downloaded file can run arbitrary code. CIFAR-10 batches
    only need dicts, lists, strings and numpy arrays; anything else is refused.
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = _safe_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays and plain containers are allowed"
        )


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(
            f"{path}: not a readable CIFAR-10 batch ({exc}); expected a pickled dict with "
            "'data' and 'labels'. Fetch the file again"
        ) from exc
    return _check_cifar_batch(path, batch)


def _check_cifar_batch(path: Path, batch: object) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path}: expected a dict with keys 'data' and 'labels'; found {keys}")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(
            f"{path}: 'data' must be a uint8 array (N, 3072); found {type(data).__name__} "
            f"{getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{path}: expected 'data' of shape (N, 3072) and N labels; found 'data' "
            f"{data.shape} and {labels.shape[0] if labels.ndim else 0} labels"
        )
    return data, labels


def _read_cifar_split(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_load_cifar_batch(path) for path in files]
    data = np.concatenate([data for data, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    # Each row is channel-major: 1024 red, then 1024 green, then 1024 blue values.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32)
    return images, torch.from_numpy(labels)


# ---------------------------------------------------------------------------
# Loading


def _check_labels(info: DatasetInfo, labels: torch.Tensor, files: list[Path]) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= info.classes):
        raise DatasetError(
            f"{files[-1]}: labels must lie in 0 .. {info.classes - 1} for {info.name}; "
            f"found {int(labels.min())} .. {int(labels.max())}"
        )


def _warn_if_unexpected(info: DatasetInfo, images: torch.Tensor, folder: Path) -> None:
    """Warn when a full-size set's pixel mean is far from the dataset's own, as when
    MNIST files sit where Fashion-MNIST was looked for (their means are 0.13 and 0.29)."""
    if images.shape[0] < 10_000:
        return
    mean = images[:2000].float().mean().item() / 255.0
    expected = sum(info.mean) / len(info.mean)
    if abs(mean - expected) > 0.05:
        logger.warning(
            "%s: pixel mean %.3f, but %s images average %.3f; is this the right dataset?",
            folder,
            mean,
            info.name,
            expected,
        )


def _dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _find_or_download(
    info: DatasetInfo, split: str, data_dir: str | os.PathLike | None, download: bool | None
) -> list[Path]:
    dirs = _search_dirs(info, data_dir)
    files = _locate(info, split, dirs)
    if files is not None:
        return files

    search = _describe_search(info, split, dirs)
    if not _download_allowed(download):
        raise DatasetError(
            f"{info.name} ({split} split) not found; {search}\n"
            f"Downloading is off ({OFFLINE_ENV}=1 or download=False): pass --data-dir "
            "with a folder holding an offline copy, or allow downloading."
        )
    root = _download_root(info, data_dir)
    _download(info, root, search)
    files = _locate(info, split, _search_dirs(info, root))
    if files is None:
        raise DatasetError(
            f"{info.name}: downloaded into {root}, but the {split} files are not where "
            f"expected; {_describe_search(info, split, _search_dirs(info, root))}"
        )
    return files


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
) -> ImageDataset:
    """Load one split of a dataset into memory as uint8 images and int64 labels.

    Folders searched, in order: ``data_dir`` (or, when it is None, the folder named by the
    environment variable ``NEMBED_DATA_DIR``), then the download cache ``~/.cache/nembed/data``,
    then, for Fashion-MNIST only, Debian's ``/usr/share/datasets/fashion-mnist``. In each,
    the files may sit in the usual sub-folder (``MNIST/raw``, ``FashionMNIST/raw``,
    ``fashion-mnist``, ``cifar-10-batches-py``) or directly in the folder itself.

    When nothing is found and ``download`` allows it (default: yes, unless
    ``NEMBED_OFFLINE=1``), torchvision downloads the dataset into the cache folder, or into
    ``data_dir`` when that is writable and holds no part of the dataset; a folder that
    holds part of it (perhaps a read-only shared copy) is never written to.

    Raises:
        UsageError: unknown ``name`` or ``split``.
        DatasetError: the files are missing, incomplete, malformed, or the download failed.
    """
    info = _dataset_info(name)
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    files = _find_or_download(info, split, data_dir, download)

    logger.info("reading %s (%s split) from %s", info.name, split, files[0].parent)
    if info.file_format == "idx":
        images, labels = _read_idx_split(info, files)
    else:
        images, labels = _read_cifar_split(files)
    _check_labels(info, labels, files)
    _warn_if_unexpected(info, images, files[0].parent)
    return ImageDataset(images, labels, name=info.name, split=split)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "RestrictedUnpickler",
    "default_cache_dir",
    "load_dataset",
    "read_idx",
]
