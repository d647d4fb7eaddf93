"""nonstop.files.write_atomic: a reader sees the old file or the new one; modes are kept or set exactly."""

import os
import stat
import threading

import pytest

from nonstop.files import write_atomic


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_0644_whatever_the_umask_and_a_secret_0600(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "conf", "a\n")
        write_atomic(tmp_path / "key", b"secret", 0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "conf").read_text() == "a\n" and mode(tmp_path / "conf") == 0o644
    assert (tmp_path / "key").read_bytes() == b"secret" and mode(tmp_path / "key") == 0o600


def test_replacing_keeps_the_mode_the_file_has(tmp_path):
    path = tmp_path / "nginx.conf"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "routes.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json"]


def test_a_reader_never_sees_half_a_file(tmp_path):
    path = tmp_path / "big"
    a, b = b"a" * 1_000_000, b"b" * 1_000_000
    write_atomic(path, a)
    seen: set[bytes] = set()
    done = threading.Event()

    def read():
        while not done.is_set():
            data = path.read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            write_atomic(path, a if i % 2 else b)
    finally:
        done.set()
        reader.join()
    assert seen <= {b"aa1000000", b"bb1000000"}, seen
