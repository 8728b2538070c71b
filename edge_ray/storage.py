"""Locations: the one filesystem layer for every path the project reads or writes.

A *location* is a local path, a ``file://`` URI, ``s3://bucket/prefix``, ``gs://bucket/prefix``
or anything else ``pyarrow.fs.FileSystem.from_uri`` accepts -- the layer Ray Train uses for
``storage_path``, so one set of settings serves shards, checkpoints and results
(ARCHITECTURE.md, "Shard format"). Every function here resolves a location string to a
(filesystem, path) pair, cached per process (a DataLoader worker resolves its bucket once).

Credentials and endpoints come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, an instance profile or workload identity), never from a config: a URI
that carries a secret (``s3://KEY:SECRET@bucket``) is refused, so no secret reaches a
config file, a log line or a checkpoint.

Object stores have no rename and no half-written objects: an upload becomes visible when it
completes. Local writes get the same guarantee through a temporary name and ``os.replace``.
Errors are ``StorageError``s whose one line names the location and the fix.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
from pyarrow.fs import FileType

# Bytes fetched per request when streaming from object storage: without a buffer every
# small read of the tar parser is one HTTP range request (20 MB took 16.5 s in 10 KB reads
# from a local S3 server, 0.06 s with an 8 MB buffer).
STREAM_BUFFER = 4 << 20


class StorageError(ValueError):
    """A location that cannot be used; the message names it and says what to do."""


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return "://" in str(location)


def is_local(location: str) -> bool:
    return not is_uri(location) or str(location).startswith("file://")


def normalize(location, base: str | os.PathLike | None = None) -> str:
    """The canonical form of a location: an absolute path for local ones (relative paths
    against ``base`` or the working directory, ``~`` expanded, ``file://`` stripped), the
    URI itself, without a trailing slash, for every other scheme. Call it on the driver:
    Ray workers run in directories of their own, where a relative path means nothing."""
    text = os.fspath(location)
    if not text:
        raise StorageError("empty location; give a local path or a URI such as s3://bucket/prefix")
    if text.startswith("file://"):
        text = urlsplit(text).path
    if is_uri(text):
        _check_uri(text)
        return text.rstrip("/") if text.rstrip("/").count("/") > 2 else text
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base if base is not None else os.getcwd()) / path
    return os.path.normpath(str(path))


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for paths and URIs alike."""
    out = str(location)
    for part in parts:
        out = out.rstrip("/") + "/" + str(part).lstrip("/")
    return out


def parent(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[0]


def basename(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def display(location: str) -> str:
    """The location as it may appear in logs and files (never user info from the URI)."""
    return str(location)


def _check_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise StorageError(f"{parts.scheme}://...@{parts.hostname}: credentials in a URI would end up in "
                           "configs and logs; remove them and set AWS_ACCESS_KEY_ID / "
                           "AWS_SECRET_ACCESS_KEY (or a profile / instance role) in the environment")


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    if scheme in ("", "file"):
        return pafs.LocalFileSystem()
    try:
        fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{netloc}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        if "Unrecognized filesystem type" in str(err) or "not supported" in str(err).lower():
            raise StorageError(f"{scheme}://{netloc}: unsupported location scheme {scheme + '://'!r}; use a "
                               "local path, file://, s3://bucket/prefix, gs://bucket/prefix or another "
                               "scheme pyarrow.fs supports") from None
        raise StorageError(f"{scheme}://{netloc}: cannot open this location ({_first_line(err)})") from None
    return fs


def forget_filesystems() -> None:
    """Drop the cached filesystems (after changing AWS_* or other settings in this process)."""
    _filesystem.cache_clear()


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a location."""
    text = str(location)
    if not is_uri(text) or text.startswith("file://"):
        return _filesystem("", ""), normalize(text)
    _check_uri(text)
    parts = urlsplit(text)
    try:
        fs = _filesystem(parts.scheme, parts.netloc)
    except StorageError as err:  # name the whole location, not only its bucket
        raise StorageError(str(err).replace(f"{parts.scheme}://{parts.netloc}", text, 1)) from None
    path = (parts.netloc + parts.path).rstrip("/") if parts.scheme in ("s3", "gs", "gcs") else \
        fs.normalize_path(parts.path or "/")
    return fs, path


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def explain(err: BaseException, location: str) -> StorageError:
    """A one-line StorageError for a failed filesystem call on ``location``."""
    if isinstance(err, StorageError):
        return err
    text = str(err)
    low = text.lower()
    if any(s in text for s in ("AccessDenied", "ACCESS_DENIED", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                               "ExpiredToken", "Forbidden", "HTTP 403", "HTTP response code 403")):
        return StorageError(f"{location}: access denied ({_first_line(err)}); check the credentials in the "
                            "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE or "
                            "the instance role) and the bucket policy")
    if any(s in low for s in ("couldn't connect", "could not connect", "connection refused",
                              "curlcode: 7", "failed to connect", "couldn't resolve host")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default endpoint")
        return StorageError(f"{location}: cannot reach the object store at {endpoint} ({_first_line(err)}); "
                            "check AWS_ENDPOINT_URL and the network")
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        missing = missing_bucket(location)
        if missing:
            return StorageError(f"{location}: bucket {missing!r} does not exist; create it or fix the URI")
        return StorageError(f"{location} does not exist")
    return StorageError(f"{location}: {type(err).__name__}: {_first_line(err)}")


def missing_bucket(location: str) -> str | None:
    """The bucket of a remote location when that bucket does not exist, else None."""
    if is_local(location):
        return None
    try:
        fs, path = resolve(location)
        bucket = path.split("/", 1)[0]
        return bucket if fs.get_file_info(bucket).type == pafs.FileType.NotFound else None
    except Exception:  # noqa: BLE001 - only refines a message
        return None


@contextlib.contextmanager
def _errors(location: str):
    try:
        yield
    except StorageError:
        raise
    except (OSError, pa.ArrowException) as err:
        raise explain(err, location) from err


# ---- queries --------------------------------------------------------------------------------

def file_type(location: str) -> pafs.FileType:
    fs, path = resolve(location)
    with _errors(location):
        return fs.get_file_info(path).type


def exists(location: str) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return file_type(location) == pafs.FileType.File


def is_dir(location: str) -> bool:
    """A directory, or on an object store a prefix that holds at least one object."""
    fs, path = resolve(location)
    with _errors(location):
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            return True
        if kind == pafs.FileType.File or is_local(location):
            return False
        return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False)))


def listdir(location: str) -> dict[str, pafs.FileType]:
    """Names directly under a directory / prefix -> their type ({} when there is none)."""
    fs, path = resolve(location)
    with _errors(location):
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return {info.base_name: info.type for info in infos}


def glob(pattern: str) -> list[str]:
    """Locations matching a shell pattern in the last part (``s3://b/demo/oe_*``), sorted."""
    if not any(c in basename(pattern) for c in "*?["):
        return [pattern]
    folder = parent(pattern)
    return [join(folder, name) for name in sorted(listdir(folder))
            if fnmatch.fnmatchcase(name, basename(pattern))]


# ---- reading --------------------------------------------------------------------------------

def open_input_stream(location: str, *, buffer_size: int | None = None):
    """A sequential read stream, buffered by `buffer_size` (default STREAM_BUFFER) on remote
    stores: objects are streamed in requests of that size, never downloaded whole."""
    fs, path = resolve(location)
    with _errors(location):
        raw = is_local(location) or buffer_size == 0  # 0: unbuffered (each read is one request)
        return fs.open_input_stream(path, buffer_size=None if raw else buffer_size or STREAM_BUFFER)


def read_bytes(location: str, *, attempts: int = 3) -> bytes:
    """The whole object; from a store a short read is read again (a connection cut inside the
    HTTP headers gave pyarrow's S3 client an empty body and no error: benchmarks/s3_cuts.py)."""
    if is_local(location):
        with open_input_stream(location) as f, _errors(location):
            return f.read()
    fs, path = resolve(location)
    for attempt in range(attempts):  # an empty answer is asked again: the size can come cut too
        with _errors(location), fs.open_input_file(path) as f:
            size, data = f.size(), f.read()
        if len(data) == size and (size or attempt == attempts - 1):
            return data
    raise StorageError(f"{location}: read {len(data)} of {size} bytes in {attempts} tries; check the network")


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def read_json(location: str):
    return json.loads(read_bytes(location))


# ---- writing --------------------------------------------------------------------------------

def makedirs(location: str) -> None:
    """Create a local directory (object stores need none)."""
    if is_local(location):
        fs, path = resolve(location)
        with _errors(location):
            fs.create_dir(path, recursive=True)


def open_output_stream(location: str):
    """A write stream; the parent folder is created on local disks. On object stores the
    object appears only when the stream is closed; locally, write to a temporary name and
    ``move`` it (``write_bytes`` does both)."""
    makedirs(parent(location))
    fs, path = resolve(location)
    with _errors(location):
        return fs.open_output_stream(path)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file at once: readers see the old content or the new, never a part."""
    if is_local(location):
        target = resolve(location)[1]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.{os.getpid()}.part"
        with _errors(location):
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        return
    with open_output_stream(location) as f, _errors(location):
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def write_json(location: str, obj, **kwargs) -> None:
    write_text(location, json.dumps(obj, **kwargs) + "\n")


def move(src: str, dst: str) -> None:
    """Rename a file (a server-side copy and delete on object stores)."""
    fs, src_path = resolve(src)
    with _errors(src):
        fs.move(src_path, resolve(dst)[1])


def delete(location: str, *, missing_ok: bool = True) -> None:
    fs, path = resolve(location)
    with _errors(location):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            if missing_ok:
                return
            raise FileNotFoundError(path)
        fs.delete_file(path)


def delete_tree(location: str) -> None:
    fs, path = resolve(location)
    with _errors(location):
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory or (kind == pafs.FileType.NotFound and not is_local(location)):
            fs.delete_dir_contents(path, missing_dir_ok=True)
            if kind == pafs.FileType.Directory:
                fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            fs.delete_file(path)


def check_writable(location: str) -> None:
    """Write and delete a small probe object under ``location``: a missing bucket, wrong
    credentials or a read-only mount fail here, in one line, before any work starts."""
    bucket = missing_bucket(location)
    if bucket:
        raise StorageError(f"{location}: bucket {bucket!r} does not exist; create it or fix the URI")
    probe = join(location, f".edge-write-check-{os.getpid()}")
    write_bytes(probe, b"ok")
    delete(probe)


def upload_tree(local_dir: str, location: str) -> list[str]:
    """Copy every file under ``local_dir`` to ``location`` (same relative names)."""
    written = []
    for file in sorted(Path(local_dir).rglob("*")):
        if file.is_file():
            target = join(location, file.relative_to(local_dir).as_posix())
            write_bytes(target, file.read_bytes())
            written.append(target)
    return written


@contextlib.contextmanager
def local_folder(location: str) -> Iterator[Path]:
    """A local folder whose files end up in ``location``: the folder itself for a local
    location, else a temporary one uploaded when the block ends without error. For outputs
    written by libraries that want a file path (matplotlib, numpy)."""
    if is_local(location):
        path = Path(resolve(location)[1])
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="edge-out-")
    try:
        yield Path(tmp)
        upload_tree(tmp, location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A local path holding the file or folder at ``location`` (a temporary download for
    remote ones, for readers that need a real file, e.g. ``torch.load`` of a checkpoint)."""
    if is_local(location):
        yield Path(resolve(location)[1])
        return
    tmp = tempfile.mkdtemp(prefix="edge-in-")
    try:
        fs, path = resolve(location)
        with _errors(location):
            if fs.get_file_info(path).type == pafs.FileType.File:
                target = Path(tmp) / basename(location)
                with fs.open_input_stream(path, buffer_size=STREAM_BUFFER) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, STREAM_BUFFER)
            else:
                pafs.copy_files(path, tmp, source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
                target = Path(tmp)
        yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
