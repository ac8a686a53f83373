"""Where trials write: a folder every node mounts, or an object store, through one set of verbs.

A *location* is a string: a local or mounted path (``/mnt/shared/search``), or a URI that
pyarrow's filesystems resolve, as Ray Tune's storage does: ``s3://bucket/prefix`` (AWS S3, or any
S3-compatible store with ``?endpoint_override=HOST:PORT&scheme=http``), ``gs://bucket/prefix``,
``hdfs://namenode:8020/path``. Credentials come the usual way for each (for S3: the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment or the node's instance role).

The verbs take and return locations, so a caller never asks which kind it has. On an object store
every write is one PUT, which the store makes visible whole or not at all: no temp names needed.
Folders get the same promise from ``search.files`` (temp name, then rename).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from search.files import write_bytes_atomic

# The object stores a location may name: scheme -> what it is (for messages and the README).
URI_SCHEMES = {
    "s3": "Amazon S3 or an S3-compatible store (endpoint_override=HOST:PORT for one of your own)",
    "gs": "Google Cloud Storage",
    "gcs": "Google Cloud Storage",
    "hdfs": "HDFS",
    "viewfs": "HDFS (viewfs)",
}
SCRATCH = Path(tempfile.gettempdir()) / "yolo-search"  # node-local copies of what lives in an object store


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names an object store (``file://`` paths are folders)."""
    return "://" in str(location) and not str(location).startswith("file://")


def uri_scheme(location: str) -> str:
    return str(location).split("://", 1)[0].lower()


def uri_bucket(location: str) -> str:
    """The bucket (or host) a URI names: ``s3://bucket/prefix?query`` -> ``bucket``; "" for none."""
    return str(location).partition("?")[0].split("://", 1)[1].strip("/").split("/", 1)[0]


def _split(uri: str) -> tuple[str, str]:
    """(``scheme://path``, ``?query`` or ""): the query (endpoint, region) belongs to the store, not the path."""
    base, sep, query = uri.partition("?")
    return base.rstrip("/"), sep + query


def join(location: str | Path, *parts: str) -> str:
    """``location`` with ``parts`` appended, keeping a URI's query at its end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, query = _split(str(location))
    return "/".join([base, *(p.strip("/") for p in parts)]) + query


@lru_cache(maxsize=16)
def _store(root_uri: str):
    """(pyarrow filesystem, its path for ``root_uri``), made once per process and store."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(root_uri)


def _resolve(location: str):
    """(filesystem, path inside it) for an object-store location."""
    base, query = _split(location)
    scheme, rest = base.split("://", 1)
    bucket = uri_bucket(location)
    filesystem, root = _store(f"{scheme}://{bucket}{query}")
    inner = rest[len(bucket):].strip("/")
    return filesystem, f"{root.rstrip('/')}/{inner}" if inner else root


@dataclass(frozen=True)
class Entry:
    """One object or file under a prefix: its name (last part) and when it was last written."""

    name: str
    mtime: float  # seconds since the epoch


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write ``data`` at ``location`` whole (a reader sees all of it or nothing)."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(Path(location), data)
        return
    filesystem, path = _resolve(str(location))
    with filesystem.open_output_stream(path) as out:
        out.write(data)


def read_bytes(location: str | Path) -> bytes | None:
    """The bytes at ``location``, or None when there is nothing there."""
    if not is_uri(location):
        try:
            return Path(location).read_bytes()
        except FileNotFoundError:
            return None
    from pyarrow import fs

    filesystem, path = _resolve(str(location))
    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def exists(location: str | Path) -> bool:
    if not is_uri(location):
        return os.path.exists(location)
    from pyarrow import fs

    filesystem, path = _resolve(str(location))
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def makedirs(location: str | Path) -> None:
    """Create the folder (or, on an object store, the prefix's marker) so that ``exists`` sees it."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        return
    filesystem, path = _resolve(str(location))
    filesystem.create_dir(path, recursive=True)


def delete(location: str | Path) -> None:
    """Remove the file or object at ``location``; nothing there is fine."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    filesystem, path = _resolve(str(location))
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        pass


def entries(location: str | Path) -> list[Entry]:
    """The files or objects directly under ``location`` (empty when there is none)."""
    if not is_uri(location):
        try:
            return [Entry(p.name, p.stat().st_mtime) for p in Path(location).iterdir() if p.is_file()]
        except FileNotFoundError:
            return []
    from pyarrow import fs

    filesystem, path = _resolve(str(location))
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return [Entry(info.base_name, info.mtime.timestamp()) for info in infos if info.type == fs.FileType.File]


def upload(local: Path, location: str | Path) -> None:
    """Copy the local file ``local`` to ``location`` (whole, as ``write_bytes``)."""
    write_bytes(location, Path(local).read_bytes())


def cache_path(location: str, *, cache: Path) -> Path:
    """Where ``local_copy`` keeps this node's copy of the object at ``location``."""
    base, _ = _split(str(location))
    return cache / base.split("://", 1)[1]


def local_copy(location: str | Path, *, cache: Path = SCRATCH / "files") -> Path:
    """A path on this node holding the file at ``location``: the file itself for a folder, else a
    downloaded copy (kept: what is cached under a content hash never changes)."""
    if not is_uri(location):
        return Path(location)
    target = cache_path(location, cache=cache)
    if not target.is_file():
        data = read_bytes(location)
        if data is None:
            raise FileNotFoundError(f"{location}: no such object")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)
    return target


def check_writable(location: str) -> str | None:
    """None when an object can be written to and deleted from ``location``; else why not."""
    probe = join(location, f".write-probe-{os.getpid()}")
    try:
        write_bytes(probe, b"probe")
        delete(probe)
    except Exception as error:  # pyarrow raises OSError subclasses and ValueError for bad URIs
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return None
