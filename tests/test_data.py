import gzip
import hashlib
import struct

import pytest
import torch

from lenet_hpo import data as D
from lenet_hpo.errors import ChecksumError, DataError


def idx_bytes(t: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, t.dim()]) + b"".join(struct.pack(">I", d) for d in t.shape)
    return header + t.to(torch.uint8).numpy().tobytes()


def test_parse_idx_images_and_labels():
    images = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    assert torch.equal(D.parse_idx(idx_bytes(images)), images)
    labels = torch.tensor([3, 1, 4], dtype=torch.uint8)
    assert torch.equal(D.parse_idx(idx_bytes(labels)), labels)


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
        D.parse_idx(blob)


@pytest.fixture
def tiny_dataset(monkeypatch):
    """A registered four-file IDX dataset with pins computed from tiny files."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "train_x": torch.randint(0, 256, (40, 28, 28), generator=gen, dtype=torch.uint8),
        "train_y": (torch.arange(40) % 10).to(torch.uint8),
        "test_x": torch.randint(0, 256, (10, 28, 28), generator=gen, dtype=torch.uint8),
        "test_y": (torch.arange(10) % 10).to(torch.uint8),
    }
    blobs = {role: idx_bytes(t) for role, t in tensors.items()}
    pins = {role: (hashlib.sha256(b).hexdigest(), len(b)) for role, b in blobs.items()}
    info = D.DatasetInfo("tiny", 1, D.DIGITS, D._idx_files(pins))
    monkeypatch.setitem(D.DATASETS, "tiny", info)
    monkeypatch.setitem(D.SOURCES, "tiny", [("local copy", D._local_copy)])
    return info, blobs, tensors


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
    out = D.fetch("tiny", tmp_path)
    assert torch.equal(out["train_x"][:, 0], tensors["train_x"])
    assert out["train_y"].dtype == torch.long and out["train_x"].shape == (40, 1, 28, 28)
    cache = D.cache_path("tiny", tmp_path)
    assert cache.exists()
    for f in raw.iterdir():  # a second load reads the cache alone
        f.unlink()
    assert torch.equal(D.fetch("tiny", tmp_path)["test_x"][:, 0], tensors["test_x"])


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
        D.fetch("tiny", tmp_path)
    assert not D.cache_path("tiny", tmp_path).exists()
    assert sorted(p.name for p in raw.iterdir()) == before  # user's files untouched, no temp files
    assert not list((tmp_path / "tiny").glob(".*tmp"))


def test_corrupt_cache_is_rebuilt_from_verified_files(tmp_path, tiny_dataset):
    info, blobs, tensors = tiny_dataset
    raw = tmp_path / "tiny" / "raw"
    raw.mkdir(parents=True)
    for role, blob in blobs.items():
        (raw / info.files[role].name).write_bytes(blob)
    D.fetch("tiny", tmp_path)
    cache = D.cache_path("tiny", tmp_path)
    cache.write_bytes(cache.read_bytes()[:100])
    assert torch.equal(D.fetch("tiny", tmp_path)["train_y"], tensors["train_y"].long())
    assert torch.load(cache, weights_only=True)["format"] == D.CACHE_FORMAT


def test_sources_in_order_and_one_clear_error(tmp_path, tiny_dataset, monkeypatch):
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

    monkeypatch.setitem(D.SOURCES, "tiny", [("local copy", D._local_copy), ("A", failing("A")), ("B", good)])
    D.fetch("tiny", tmp_path)
    assert calls == ["A", "good"]
    # the verified files are kept as the local copy for next time
    assert (tmp_path / "tiny" / "raw" / "train-images-idx3-ubyte").read_bytes() == blobs["train_x"]

    monkeypatch.setitem(D.SOURCES, "tiny", [("local copy", D._local_copy), ("A", failing("A")), ("B", failing("B"))])
    with pytest.raises(DataError) as err:
        D.fetch("tiny", tmp_path / "elsewhere")
    text = str(err.value)
    assert "local copy" in text and "A unreachable" in text and "B unreachable" in text
    assert "run `python -m lenet_hpo data` again" in text
    assert not (tmp_path / "elsewhere" / "tiny" / "tensors.pt").exists()


def test_a_source_returning_a_bad_file_falls_through(tmp_path, tiny_dataset, monkeypatch):
    info, blobs, _ = tiny_dataset

    def bad(i, d):
        return {role: D.verify(b"x" * pin.size, pin, "mirror") for role, pin in i.files.items()}

    monkeypatch.setitem(D.SOURCES, "tiny", [("local copy", D._local_copy), ("mirror", bad)])
    with pytest.raises(DataError, match="mirror: .*corrupted"):
        D.fetch("tiny", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        D.load_data("svhn")


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 200, 300, 400])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    tr, va = D.stratified_split(labels, 100, seed=3)
    tr2, va2 = D.stratified_split(labels, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    assert torch.bincount(labels[va]).tolist() == [10, 20, 30, 40]
    _, other = D.stratified_split(labels, 100, seed=4)
    assert not torch.equal(va, other)
    with pytest.raises(ValueError, match="val_size"):
        D.stratified_split(labels, 0, seed=0)


def test_split_quota_sums_exactly_with_remainders():
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    _, va = D.stratified_split(labels, 10, seed=0)
    assert len(va) == 10 and sorted(torch.bincount(labels[va]).tolist()) == [3, 3, 4]


def test_to_32_pad_and_resize():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    padded = D.to_32(x, "pad")
    assert padded.shape == (2, 1, 32, 32) and padded.dtype == torch.uint8
    assert padded[:, :, :2].sum() == 0 and torch.equal(padded[:, :, 2:30, 2:30], x)
    resized = D.to_32(x, "resize")
    assert resized.shape == (2, 1, 32, 32) and int(resized.float().mean()) == 200
    with pytest.raises(ValueError, match="resize"):
        D.to_32(x, "crop")


def test_normalisation_uses_train_split_stats(synthetic):
    x = D.normalize(synthetic.train.x, synthetic.mean, synthetic.std)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    assert D.normalize(synthetic.val.x, synthetic.mean, synthetic.std).dtype == torch.float32


def test_load_data_parts_and_meta(synthetic):
    assert len(synthetic.val) == 400 and len(synthetic.train) == 1600 and len(synthetic.test) == 500
    assert synthetic.train.x.shape[1:] == (1, 32, 32)
    meta = synthetic.meta()
    assert meta["split_seed"] == 0 and meta["n_val"] == 400 and meta["classes"] == list(D.DIGITS)
    limited = D.load_data("synthetic", val_size=400, train_limit=300)
    assert len(limited.train) == 300 and len(limited.val) == 400
    assert torch.bincount(limited.train.y).min() >= 25


@pytest.mark.realdata
def test_real_mnist_is_verified_and_learnable(mnist_dir):
    from lenet_hpo.config import BASELINE
    from lenet_hpo.train import train

    data = D.load_data("mnist", data_dir=mnist_dir, train_limit=6000)
    assert (len(data.val), len(data.test)) == (10_000, 10_000)
    assert data.checksum == D.dataset_checksum(D.DATASETS["mnist"])
    assert abs(data.mean[0] - 0.1307 * 28 * 28 / 32 / 32) < 0.005  # padding adds background
    assert torch.bincount(data.val.y).min() > 850  # stratified: each digit ~10%
    cfg = BASELINE.replace(activation="relu", pooling="max", optimizer="adam", lr=2e-3, epochs=1)
    result = train(cfg, data, device="cpu")
    assert result.history[-1].val_acc > 0.9


def test_channel_stats_match_the_direct_computation():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = D.channel_stats(x)
    xf = x.double() / 255
    assert mean == pytest.approx(tuple(xf.mean((0, 2, 3)).tolist()), abs=1e-12)
    assert std == pytest.approx(tuple(xf.std((0, 2, 3)).tolist()), abs=1e-12)


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    path = tmp_path / "f.bin"
    D.atomic_write_bytes(path, b"abc")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"abc" and (path.stat().st_mode & 0o777) == (0o666 & ~umask)
