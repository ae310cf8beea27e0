from lenet_hpo.files import atomic_write_bytes


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"abc")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"abc" and (path.stat().st_mode & 0o777) == (0o666 & ~umask)
