import gzip
import hashlib
import struct

import pytest
import torch

from lenet_hpo import acquire as A
from lenet_hpo.data import load_data
from lenet_hpo.errors import ChecksumError, DataError


def idx_bytes(t: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, t.dim()]) + b"".join(struct.pack(">I", d) for d in t.shape)
    return header + t.to(torch.uint8).numpy().tobytes()


def test_parse_idx_images_and_labels():
    images = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert torch.equal(A.parse_idx(idx_bytes(images)), images)
    labels = torch.tensor([3, 1, 4], dtype=torch.uint8)
    assert torch.equal(A.parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x00\x08\x01", "bad magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01", "not supported"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (idx_bytes(torch.zeros(2, 3, 3))[:-1], "truncated or corrupted"),
        (idx_bytes(torch.zeros(2, 3, 3)) + b"\x00", "truncated or corrupted"),
    ],
)
def test_parse_idx_rejects_bad_files(blob, message):
    with pytest.raises(DataError, match=message):
        A.parse_idx(blob)


def tiny_info(pins, *sources):
    """A four-file IDX dataset with the given pins and sources (after its local copy)."""
    return A.DatasetInfo("tiny", 1, A.DIGITS, A.idx_files(pins), (("local copy", A.local_copy), *sources))


@pytest.fixture
def tiny_dataset():
    """A four-file IDX dataset with pins computed from tiny files, read from its local copy."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "train_x": torch.randint(0, 256, (40, 28, 28), generator=gen, dtype=torch.uint8),
        "train_y": (torch.arange(40) % 10).to(torch.uint8),
        "test_x": torch.randint(0, 256, (10, 28, 28), generator=gen, dtype=torch.uint8),
        "test_y": (torch.arange(10) % 10).to(torch.uint8),
    }
    blobs = {role: idx_bytes(t) for role, t in tensors.items()}
    pins = {role: (hashlib.sha256(b).hexdigest(), len(b)) for role, b in blobs.items()}
    return tiny_info(pins), blobs, tensors


def test_local_copy_is_verified_decoded_and_cached(tmp_path, tiny_dataset):
    info, blobs, tensors = tiny_dataset
    raw = tmp_path / "tiny" / "raw"
    raw.mkdir(parents=True)
    for role, blob in blobs.items():  # a mix of plain and gzipped files
        name = info.files[role].name
        if role.endswith("x"):
            (raw / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (raw / name).write_bytes(blob)
    out = A.fetch(info, tmp_path)
    assert torch.equal(out["train_x"][:, 0], tensors["train_x"])
    assert out["train_y"].dtype == torch.long and out["train_x"].shape == (40, 1, 28, 28)
    cache = A.cache_path("tiny", tmp_path)
    assert cache.exists()
    for f in raw.iterdir():  # a second load reads the cache alone
        f.unlink()
    assert torch.equal(A.fetch(info, tmp_path)["test_x"][:, 0], tensors["test_x"])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_local_file_is_refused_and_nothing_is_cached(tmp_path, tiny_dataset, damage):
    info, blobs, _ = tiny_dataset
    raw = tmp_path / "tiny" / "raw"
    raw.mkdir(parents=True)
    for role, blob in blobs.items():
        if role == "train_x":
            blob = blob[:-7] if damage == "truncate" else blob[:-1] + bytes([blob[-1] ^ 0xFF])
        (raw / info.files[role].name).write_bytes(blob)
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.*delete it"):
        A.fetch(info, tmp_path)
    assert not A.cache_path("tiny", tmp_path).exists()
    assert sorted(p.name for p in raw.iterdir()) == before  # user's files untouched, no temp files
    assert not list((tmp_path / "tiny").glob(".*tmp"))


def test_corrupt_cache_is_rebuilt_from_verified_files(tmp_path, tiny_dataset):
    info, blobs, tensors = tiny_dataset
    raw = tmp_path / "tiny" / "raw"
    raw.mkdir(parents=True)
    for role, blob in blobs.items():
        (raw / info.files[role].name).write_bytes(blob)
    A.fetch(info, tmp_path)
    cache = A.cache_path("tiny", tmp_path)
    cache.write_bytes(cache.read_bytes()[:100])
    assert torch.equal(A.fetch(info, tmp_path)["train_y"], tensors["train_y"].long())
    assert torch.load(cache, weights_only=True)["format"] == A.CACHE_FORMAT


def test_sources_in_order_and_one_clear_error(tmp_path, tiny_dataset):
    info, blobs, _ = tiny_dataset
    calls = []

    def failing(label):
        def source(i, d):
            calls.append(label)
            raise RuntimeError(f"{label} unreachable")

        return source

    def good(i, d):
        calls.append("good")
        return dict(blobs)

    pins = {role: (pin.sha256, pin.size) for role, pin in info.files.items()}
    A.fetch(tiny_info(pins, ("A", failing("A")), ("B", good)), tmp_path)
    assert calls == ["A", "good"]
    # the verified files are kept as the local copy for next time
    assert (tmp_path / "tiny" / "raw" / "train-images-idx3-ubyte").read_bytes() == blobs["train_x"]

    with pytest.raises(DataError) as err:
        A.fetch(tiny_info(pins, ("A", failing("A")), ("B", failing("B"))), tmp_path / "elsewhere")
    text = str(err.value)
    assert "local copy" in text and "A unreachable" in text and "B unreachable" in text
    assert "run `python -m lenet_hpo data` again" in text
    assert not (tmp_path / "elsewhere" / "tiny" / "tensors.pt").exists()


def test_a_source_returning_a_bad_file_falls_through(tmp_path, tiny_dataset):
    info, blobs, _ = tiny_dataset

    def bad(i, d):
        return {role: A.verify(b"x" * pin.size, pin, "mirror") for role, pin in i.files.items()}

    pins = {role: (pin.sha256, pin.size) for role, pin in info.files.items()}
    with pytest.raises(DataError, match="mirror: .*corrupted"):
        A.fetch(tiny_info(pins, ("mirror", bad)), tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        load_data("svhn")
