"""A spool of JPEG crops on disk: `h36m extract` writes a sequence's crops camera after camera, then reads them back
row by row (one JPEG per camera) while writing the Parquet file, so memory does not grow with the sequence length."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


class Spool:
    """A sequence's JPEG crops, camera after camera, in an unlinked temp file next to the output instead of memory
    (a real sequence has up to 6349 frames x 4 views); read back a row group at a time by `write_sequence`."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".spool-")
        self.index: dict[str, list[tuple[int, int]]] = {}
        self.end = 0

    def put(self, camera: str, data: bytes) -> None:
        self.file.write(data)
        self.index.setdefault(camera, []).append((self.end, len(data)))
        self.end += len(data)

    def drop(self, camera: str) -> None:
        self.index.pop(camera, None)

    def rows(self, cameras: list[str], frames: int) -> "SpoolRows":
        self.file.flush()
        return SpoolRows(self, cameras, frames)

    def close(self) -> None:
        """Discard the spool. Its file is unlinked already, so data still buffered need not reach the disk: a
        full disk failing that last flush is not an error (the error that stopped the work is reported)."""
        try:
            self.file.close()
        except OSError:
            pass


@dataclass
class SpoolRows:
    """Rows of a spool as `write_sequence` slices them: rows[a:b] -> b - a lists of one JPEG per camera."""
    spool: Spool
    cameras: list[str]
    frames: int

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, rows: slice) -> list[list[bytes]]:
        fd, index = self.spool.file.fileno(), self.spool.index

        def read(camera: str, t: int) -> bytes:
            offset, length = index[camera][t]
            return os.pread(fd, length, offset)

        return [[read(c, t) for c in self.cameras] for t in range(*rows.indices(self.frames))]
