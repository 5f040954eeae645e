"""Token files where users keep them: `data.path` is a local path or an fsspec URL (file://,
and any filesystem fsspec has installed: object stores through s3fs/gcsfs/adlfs, HDFS through
pyarrow, memory:// in tests). A local file is memory-mapped; any other is read through fsspec
with a seek and a read per sample. No torch here: the launcher checks every path before
anything is submitted."""
from __future__ import annotations

import functools
import os
from typing import Optional

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@functools.lru_cache(maxsize=None)
def source_problem(url: str) -> Optional[str]:
    """Why `url` cannot be read (an unknown scheme, a filesystem that is not installed, a
    missing file), or None; the message names data.path."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:  # unknown protocol / implementation not installed
        return f"data.path={url}: {exc}"
    try:
        if not fs.isfile(path):
            return f"data.path={url}: no such file"
    except Exception as exc:  # credentials, network: say what the filesystem said
        return f"data.path={url}: {type(exc).__name__}: {exc}"
    return None


class TokenSource:
    """The token ids of one file, read by position: memory-mapped when local, otherwise through
    fsspec (opened once per process, so DataLoader workers each get their own handle)."""

    def __init__(self, url: str, dtype: str = "uint16") -> None:
        self.url, self.dtype = url, np.dtype(DTYPES[dtype])
        self._fs, self._path = fsspec.core.url_to_fs(url)
        self.local = isinstance(self._fs, LocalFileSystem)
        self.n_tokens = self._fs.size(self._path) // self.dtype.itemsize
        self._handle, self._pid = None, None

    def __getstate__(self) -> dict:  # a handle does not cross into a worker process
        return {**self.__dict__, "_handle": None, "_pid": None}

    def _open(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = (np.memmap(self._path, dtype=self.dtype, mode="r") if self.local
                            else self._fs.open(self._path, "rb"))
            self._pid = os.getpid()
        return self._handle

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) as int64."""
        handle = self._open()
        if self.local:
            return handle[start:start + count].astype(np.int64)
        handle.seek(start * self.dtype.itemsize)
        return np.frombuffer(handle.read(count * self.dtype.itemsize), dtype=self.dtype).astype(np.int64)

    def max_token(self) -> Optional[int]:
        """The largest id in the file, for a local file (a scan of a memory map); None for a
        remote one, whose samples are checked as they are read instead."""
        return int(self._open().max()) if self.local else None
