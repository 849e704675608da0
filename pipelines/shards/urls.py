"""Where shards are: URL patterns expanded to shard lists, the index beside a shard, and a stream for a URL.

A shard URL is a local path, `file:`, `http(s)://` (urllib) or `pipe:cmd` (a shell command whose output is the tar;
only ever a URL the user typed: see `is_pipe`). Every command that takes shards expands them here.
"""
from __future__ import annotations

import glob
import json
import re
import urllib.parse
import urllib.request
from pathlib import Path

from h36m.pipelines.shards.sample import SHARD_RE

MAX_SEQUENCE_FRAMES = 1_000_000         # an index's sequence length above this is not believed (H36M's: < 7000)


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace patterns (`a-{000000..000003}.tar`), `::`-separated lists and local globs -> a list of URLs, in order
    (each glob sorted). A local path that exists is taken as it is, even if it holds glob characters."""
    import braceexpand

    items = urls.split("::") if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            if is_local(url) and any(c in url for c in "*?[") and not Path(local_path(url)).exists():
                out += sorted(glob.glob(local_path(url)))     # (a path that exists is itself, `[` and all)
            else:
                out.append(url)
    return out


def shard_files(args) -> list[Path]:
    """Command-line arguments -> local shard files: a folder means its `*.tar`, patterns as `expand_urls`."""
    out = []
    for url in expand_urls(list(args)):
        p = Path(local_path(url))
        out += sorted(p.glob("*.tar")) if p.is_dir() else [p]
    return out


def is_local(url: str) -> bool:
    """A path or a `file:` URL (not `pipe:`, `http:`, ...)."""
    return not re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("file:")


def is_pipe(url: str) -> bool:
    """A `pipe:` URL: a shell command."""
    return url.startswith("pipe:")


def local_path(url: str) -> str:
    return urllib.parse.urlparse(url).path if url.startswith("file:") else url


def index_for(shard: str | Path) -> Path | None:
    """The index file beside a local shard `{split}-NNNNNN.tar`, or None if the name does not follow the scheme."""
    shard = Path(shard)
    m = SHARD_RE.match(shard.name)
    return shard.with_name(f"{m.group('split')}-index.json") if m else None


def _tar_target(url: str) -> str | None:
    """The shard a URL names: itself, or for `pipe:cmd ... x.tar` the last `.tar` path or URL in the command."""
    if is_pipe(url):
        tars = re.findall(r"[^\s'\"]+\.tar\b", url[5:])
        return tars[-1] if tars else None
    return url


def _fetch_index(index_url: str) -> dict | None:
    try:
        if is_local(index_url):
            p = Path(local_path(index_url))
            return json.loads(p.read_text()) if p.is_file() else None
        with urllib.request.urlopen(index_url, timeout=30) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _indexes(urls: list[str]) -> list[tuple[str, dict]]:
    """(shard file name, the `{split}-index.json` beside it, {} where there is none) for each URL."""
    cache: dict[str, dict | None] = {}
    out = []
    for url in urls:
        target = _tar_target(url)
        name = target.rsplit("/", 1)[-1] if target else ""
        m = SHARD_RE.match(name)
        if not m:
            out.append((name, {}))
            continue
        index_url = target[: len(target) - len(name)] + f"{m.group('split')}-index.json"
        if index_url not in cache:
            cache[index_url] = _fetch_index(index_url)
        index = cache[index_url]
        out.append((name, index if isinstance(index, dict) else {}))
    return out


def shard_counts(urls: list[str]) -> list[int | None]:
    """Samples per shard from the `{split}-index.json` beside each shard (None where no index lists it)."""
    out = []
    for name, index in _indexes(urls):
        shards = index.get("shards")
        counts = {e.get("name"): e.get("samples") for e in shards if isinstance(e, dict)} \
            if isinstance(shards, list) else {}
        n = counts.get(name)
        out.append(int(n) if isinstance(n, int) else None)
    return out


def sequence_frames(urls: list[str]) -> dict[str, int]:
    """'{subject}/{sequence}' (clip keys' prefix) -> frames of the extracted sequence, from the indexes beside the
    shards (`sequence_frames`; entries that are not a positive int below MAX_SEQUENCE_FRAMES are ignored)."""
    out: dict[str, int] = {}
    for _, index in _indexes(urls):
        lengths = index.get("sequence_frames")
        if isinstance(lengths, dict):
            out.update({k: v for k, v in lengths.items()
                        if isinstance(k, str) and type(v) is int and 0 < v < MAX_SEQUENCE_FRAMES})
    return out


def open_url(url: str):
    """A binary stream for a local path, file:, http(s): (urllib, no curl needed) or pipe: URL."""
    if is_local(url):
        return open(local_path(url), "rb", buffering=1 << 20)
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)
    from webdataset.gopen import gopen

    return gopen(url, "rb")
