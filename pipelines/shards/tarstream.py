"""Streaming tar reading for the loader: the members of a tar stream, grouped into WebDataset samples.

    for sample in iter_samples(iter_tar_files(open("train-000000.tar", "rb")), url="train-000000.tar"):
        sample["__key__"], sample["meta.json"], ...

A lean reader of the ustar members `h36m shard` writes (GNU long names and pax `path` records are followed, other
entries skipped), several times faster than `tarfile` per member, and WebDataset's grouping (`group_by_keys` with its
`base_plus_ext` key split) without its per-member dicts. The loader's time per crop is mostly JPEG decoding; what is
left is mostly this, so it is kept to a few C calls per member, and a local shard is mapped rather than read (its
members are views of the page cache: no copy, no heap memory to fault in).
"""
from __future__ import annotations

import io
import mmap
import os
import stat
import struct
import zlib
from typing import Iterable, Iterator

BLOCK = 512
#: The ustar header fields read here: name, size, chksum, typeflag, prefix (the rest skipped).
_HEADER = struct.Struct("100s24x12s12x8sc100x88x155s12x")
_NO_CHECKSUM = bytes(8)


def _octal(field: bytes) -> int:
    """A numeric header field: octal digits up to the first NUL, blanks around them ignored (as `tarfile` reads).
    Raises ValueError on anything else. (No exception on the usual fields: the checksum's `0012345\\0 ` ends in a
    blank after its NUL, and a raised and caught ValueError costs more than the rest of a header.)"""
    text = field.split(b"\0", 1)[0]
    return int(text, 8) if text.strip() else 0


def _byte_sum(block) -> int:
    """The sum of a 512-byte block's bytes, exactly: Adler-32's low half is 1 + the byte sum mod 65521, and a
    256-byte half sums to at most 65280 (a few times faster than `sum`)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _mapped(stream) -> memoryview | None:
    """A read-only memoryview of the rest of `stream` if it is a regular file (mapped, not read), else None."""
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        start = stream.tell()
        return memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))[start:]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def iter_tar_files(stream, chunk: int = 1 << 20,
                   buffer: bytearray | None = None) -> Iterator[tuple[str, bytes | memoryview]]:
    """`(name, data)` of the regular files of a tar stream, in order. Raises EOFError on a truncated archive
    (including a missing end-of-archive block) and ValueError on a damaged header, after yielding the members before
    it.

    A regular file is memory-mapped and `data` is a read-only memoryview into the mapping: no copy, no heap memory
    (the mapping lives while any member does; the page cache holds the bytes either way). Other streams (pipes,
    sockets) are read `chunk` bytes at a time into `buffer` (a bytearray a reader may pass again for the next
    stream: a fresh one costs a page fault per 4 kB) and `data` is a bytes copy. Both are bytes-like: `bytes(data)`
    where a str/bytes is needed (json)."""
    view = _mapped(stream)
    mapped = view is not None
    if mapped:
        buf, pos, end = view, 0, len(view)
    else:
        buf = buffer if buffer is not None and len(buffer) >= BLOCK else bytearray(max(chunk, BLOCK))
        view = memoryview(buf)
        pos = end = 0
    readinto = getattr(stream, "readinto", None)

    def fill(n: int) -> bool:           # buf[pos:pos + n] readable? (a socket or pipe may return less than asked)
        nonlocal buf, view, pos, end
        if mapped:
            return end - pos >= n
        if n > len(buf) - pos:          # make room: move what is left to the front, grow if one member needs it
            if n > len(buf):
                grown = bytearray(max(n, chunk))
                grown[: end - pos] = view[pos:end]
                view.release()
                buf, view = grown, memoryview(grown)
            else:
                buf[: end - pos] = view[pos:end]
            pos, end = 0, end - pos
        while end - pos < n:
            if readinto is not None:
                got = readinto(view[end:])
            else:
                more = stream.read(len(buf) - end)
                got = len(more)
                view[end:end + got] = more
            if not got:
                return False
            end += got
        return True

    unpack = _HEADER.unpack_from
    name_override = None
    try:
        while True:
            if end - pos < BLOCK and not fill(BLOCK):
                raise EOFError("truncated tar: no end-of-archive block" if pos == end else "truncated tar header")
            name, size, chksum, kind, prefix = unpack(buf, pos)
            if chksum == _NO_CHECKSUM and not any(view[pos:pos + BLOCK]):
                return                                        # end-of-archive block
            try:         # the checksum: the header's byte sum with its own field counted as 8 spaces
                ok = _octal(chksum) == _byte_sum(view[pos:pos + BLOCK]) - sum(chksum) + 256
                size = _octal(size)
            except ValueError:
                ok = False
            pos += BLOCK
            if not ok:
                raise ValueError("damaged tar header (bad checksum)")
            padded = size + -size % BLOCK
            if end - pos < padded and not fill(padded):
                raise EOFError("truncated tar: unexpected end of data")
            data = view[pos:pos + size] if mapped else bytes(view[pos:pos + size])
            pos += padded
            if kind == b"0" or kind == b"\0":
                if name_override is not None:
                    yield name_override.decode("utf-8", "replace"), data
                    name_override = None
                else:
                    name = name.split(b"\0", 1)[0]
                    if prefix[0]:
                        name = prefix.split(b"\0", 1)[0] + b"/" + name
                    yield name.decode("utf-8", "replace"), data
            elif kind == b"L":                                # GNU long name of the next member
                name_override = bytes(data).rstrip(b"\0")
            elif kind == b"x":                                # pax extended header: 'len path=...\n' records
                for rec in bytes(data).split(b"\n"):
                    _, _, kv = rec.partition(b" ")
                    if kv.startswith(b"path="):
                        name_override = kv[5:]
            else:
                name_override = None
    finally:
        if not mapped:
            view.release()


def split_key(fname: str) -> tuple[str | None, str | None]:
    """WebDataset's member name -> (sample key, extension) split (`base_plus_ext`: the key ends at the first dot of
    the base name), without a regular expression; (None, None) for a name it would not group."""
    slash = fname.rfind("/") + 1
    dot = fname.find(".", slash)
    if dot < 0:
        return None, None
    if dot == slash:                    # a base name starting with a dot: the regular expression's own rules
        from webdataset.tariterators import base_plus_ext

        return base_plus_ext(fname)
    return fname[:dot], fname[dot + 1:]


def iter_samples(files: Iterable[tuple[str, bytes]], url: str | None = None) -> Iterator[dict]:
    """WebDataset samples (`{"__key__", "__url__", extension: bytes, ...}`) of `(name, data)` members, grouped as
    `webdataset.tariterators.group_by_keys` groups them: consecutive members with the same key, extensions in lower
    case, members without an extension dropped; ValueError on an extension twice in one sample."""
    sample = None
    key = None
    for name, data in files:
        k, ext = split_key(name)
        if k is None:
            continue
        if k != key:
            if sample is not None:
                yield sample
            key, sample = k, {"__key__": k, "__url__": url}
        ext = ext.lower()
        if ext in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {ext}")
        sample[ext] = data
    if sample is not None:
        yield sample
