"""The shard reader's tar parser (`edge_ray.data.tarstream`) against Python's `tarfile` as the
reference: the same members (name, kind, size, bytes) for tars written in every format
tarfile writes, by webdataset's TarWriter, compressed, and read through streams that return
short reads across every buffer boundary; damage is an error naming the byte offset."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

import numpy as np
import pytest

from edge_ray.data import tarstream
from edge_ray.data.tarstream import TarDamaged, TarStream


class Trickle(io.RawIOBase):
    """A stream that returns at most a random number of bytes per read (a network stream)."""

    def __init__(self, data: bytes, seed: int):
        self._data, self._pos, self._gen = data, 0, np.random.default_rng(seed)

    def read(self, n=-1):
        if n is None or n < 0:
            n = len(self._data)
        n = min(n, int(self._gen.integers(1, 700)))
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def reference(data: bytes) -> list[tuple]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        for m in tar:
            kind = "file" if m.isfile() else "dir" if m.isdir() else "other"
            out.append((m.name, kind, m.size if kind == "file" else m.size,
                        tar.extractfile(m).read() if kind == "file" else None))
    return out


def parsed(stream, read_every: int = 1) -> list[tuple]:
    out = []
    tar = TarStream(stream)
    for i, m in enumerate(tar):
        data = tar.read() if m.type == "file" and i % read_every == 0 else None
        out.append((m.name, m.type, m.size, data))
    return out


def random_tar(fmt, seed: int, *, pax_global: bool = False) -> bytes:
    gen = np.random.default_rng(seed)
    buf = io.BytesIO()
    kwargs = {"pax_headers": {"comment": "shard", "uname": "ü"}} if pax_global else {}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kwargs) as tar:
        for i in range(40):
            r = gen.random()
            if r < 0.2 and fmt == tarfile.USTAR_FORMAT:  # long, but as a 155-byte prefix + 100-byte name
                stem = "p" * int(gen.integers(90, 150)) + "/" + "n" * int(gen.integers(60, 90)) + f"{i:03d}"
            elif r < 0.2:
                stem = "d%d/" % (i % 3) + "x" * int(gen.integers(90, 300)) + f"{i:03d}"
            else:
                stem = "d%d/s%04d" % (i % 3, i)
            if gen.random() < 0.1 and fmt != tarfile.USTAR_FORMAT:
                stem += "-ü-名"
            if r < 0.08:
                info = tarfile.TarInfo(stem + "_dir")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            if r < 0.12:
                info = tarfile.TarInfo(stem + ".lnk")
                info.type = tarfile.SYMTYPE
                info.linkname = "target/" + "y" * int(gen.integers(1, 150 if fmt != tarfile.USTAR_FORMAT else 90))
                tar.addfile(info)
                continue
            size = int(gen.choice([0, 1, 511, 512, 513, 1024, int(gen.integers(0, 5000))]))
            payload = gen.integers(0, 256, size, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(stem + (".png" if i % 2 else ".json"))
            info.size = size
            info.mtime = int(gen.integers(0, 2 ** 33)) if fmt != tarfile.USTAR_FORMAT else 0
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_same_members_as_tarfile(fmt, monkeypatch):
    for seed in range(6):
        data = random_tar(fmt, seed, pax_global=fmt == tarfile.PAX_FORMAT and seed % 2 == 1)
        want = reference(data)
        assert parsed(io.BytesIO(data)) == want
        # small buffers and short reads: every boundary falls inside headers and data
        monkeypatch.setattr(tarstream, "READ_SIZE", 97 + seed)
        assert parsed(Trickle(data, seed)) == want
        # members whose data is never read are skipped, not returned
        got = parsed(Trickle(data, seed + 100), read_every=3)
        assert [g[:3] for g in got] == [w[:3] for w in want]
        assert all(g[3] == w[3] for g, w in zip(got, want) if g[3] is not None)
        monkeypatch.undo()


def test_webdataset_tarwriter_shards_and_compressed_tars():
    import webdataset as wds

    buf = io.BytesIO()
    gen = np.random.default_rng(1)
    with wds.TarWriter(buf, encoder=False, user="", group="", mode=0o644, mtime=0) as w:
        for i in range(25):
            w.write({"__key__": f"sample{i:05d}", "png": gen.bytes(int(gen.integers(1, 3000))),
                     "json": b'{"labels": [%d]}' % i})
    data = buf.getvalue()
    want = reference(data)
    assert len(want) == 50 and parsed(io.BytesIO(data)) == want
    for pack in (gzip.compress, bz2.compress, lzma.compress):
        assert parsed(Trickle(pack(data), 3)) == want


def test_damage_is_an_error_naming_the_offset():
    data = random_tar(tarfile.GNU_FORMAT, 2)
    members = reference(data)
    with pytest.raises(TarDamaged, match="empty file"):
        parsed(io.BytesIO(b""))
    with pytest.raises(TarDamaged, match="(invalid header|bad header checksum) at byte 0"):
        parsed(io.BytesIO(b"not a tar" * 100))
    # cut inside a member's data, inside a header, and a header overwritten
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
    big = next(m for m in infos[3:] if m.isfile() and m.size > 20)
    header = infos[5].offset
    for broken, message in ((data[:big.offset_data + 10], "unexpected end of data"),
                            (data[:header + 100], f"truncated header at byte {header}"),
                            (data[:header] + b"\x01" * 512 + data[header + 512:],
                             f"invalid header at byte {header}"),
                            (data[:header] + b"X" + data[header + 1:], f"bad header checksum at byte {header}")):
        with pytest.raises(TarDamaged, match=message):
            for _ in TarStream(io.BytesIO(broken)):
                pass
    # the end of the data without the two zero blocks is the end, as for tarfile
    end = _end_of_last_member(data)
    assert parsed(io.BytesIO(data[:end])) == members


def _end_of_last_member(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
        return last.offset_data + -(-last.size // 512) * 512


def test_a_damaged_shard_names_itself_and_the_fix(tmp_path):
    """Through the reader: a shard cut in the middle of a sample fails with the shard named,
    how far it got and 'reconvert the set' (it is not retried as a network failure)."""
    import webdataset as wds

    from edge_ray.data.records import read_shard

    path = tmp_path / "s-000000.tar"
    with wds.TarWriter(str(path), encoder=False) as w:
        for i in range(10):
            w.write({"__key__": f"k{i}", "png": bytes(2000), "json": b'{"labels": []}'})
    good = [r.key for r in read_shard(str(path), np.arange(10), expected=10)]
    assert good == [f"k{i}" for i in range(10)]
    path.write_bytes(path.read_bytes()[:15000])
    with pytest.raises(ValueError, match=r"s-000000.tar' is damaged after \d+ of 10 wanted samples.*reconvert the set"):
        list(read_shard(str(path), np.arange(10), expected=10, attempts=1))
