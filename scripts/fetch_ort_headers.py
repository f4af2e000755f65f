#!/usr/bin/env python3
"""Fetch ONNX Runtime's C/C++ API headers with Python's standard library only.

    python3 scripts/fetch_ort_headers.py [--cache DIR] [--source URL --sha256 HEX]

Prints the include folder (the one holding onnxruntime_c_api.h) on success. The sources are pinned
below with their SHA-256: Debian's libonnxruntime-dev .deb (an `ar` archive whose data.tar.* holds
usr/include/onnxruntime), first from deb.debian.org's pool and then from snapshot.debian.org (the same
file, kept after the suite moves on). An ONNX Runtime release archive (onnxruntime-linux-x64-X.Y.Z.tgz,
headers under */include) works too: pass it with --source/--sha256 or CAFFE2_ORT_HEADERS_URL and
CAFFE2_ORT_HEADERS_SHA256; a local file path is accepted as the URL.

The download is checked and unpacked into the cache (default: $CAFFE2_ORT_CACHE_DIR, else
$XDG_CACHE_HOME/caffe2-ort, else ~/.cache/caffe2-ort), under a folder named by the checksum, and reused
offline on later builds. The headers are never written into the source tree. Exit status 1 with one
message naming every source tried and how to set ORT_INCLUDE_DIR when nothing worked.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

HEADER = "onnxruntime_c_api.h"
DEB_NAME = "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
DEB_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
# (url, sha256): tried in order.
PINNED = [
    (f"http://deb.debian.org/debian/pool/main/o/onnxruntime/{DEB_NAME}", DEB_SHA256),
    (f"https://snapshot.debian.org/archive/debian/20250901T000000Z/pool/main/o/onnxruntime/{DEB_NAME}", DEB_SHA256),
]
TIMEOUT_S = 60


class FetchError(Exception):
    pass


def cache_root() -> Path:
    if os.environ.get("CAFFE2_ORT_CACHE_DIR"):
        return Path(os.environ["CAFFE2_ORT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "caffe2-ort"


def _download(url: str) -> bytes:
    if "://" not in url:
        return Path(url).read_bytes()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:  # noqa: S310 (pinned URLs, checked hash)
        return r.read()


def _ar_members(data: bytes):
    """Members of a System V / GNU `ar` archive (the .deb container): yields (name, bytes)."""
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not an ar archive (.deb)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[pos + 60:pos + 60 + size]
        yield name, body
        pos += 60 + size + (size & 1)


def _tar_of(data: bytes) -> tarfile.TarFile:
    """The tar archive holding the files: a .deb's data.tar.*, or the archive itself (.tgz)."""
    if data.startswith(b"!<arch>\n"):
        for name, body in _ar_members(data):
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        raise FetchError(".deb without data.tar.*")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")


def _unpack_headers(data: bytes, dest: Path) -> None:
    """Copies the folder that holds onnxruntime_c_api.h (regular files only) into dest."""
    with _tar_of(data) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        tops = [m.name for m in members if m.name.endswith("/" + HEADER)]
        if not tops:
            raise FetchError(f"the archive holds no {HEADER}")
        prefix = tops[0][: -len(HEADER)]
        dest.mkdir(parents=True, exist_ok=True)
        for m in members:
            if not m.name.startswith(prefix):
                continue
            rel = Path(m.name[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts:
                raise FetchError(f"unsafe path in archive: {m.name}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            out.write_bytes(src.read())


def fetch(sources, cache: Path) -> Path:
    tried = []
    for url, sha in sources:
        include = cache / f"ort-headers-{sha[:16]}" / "include"
        if (include / HEADER).is_file():
            return include
        try:
            data = _download(url)
        except Exception as e:  # network or file errors: try the next source
            tried.append(f"{url}: {e}")
            continue
        got = hashlib.sha256(data).hexdigest()
        if got != sha.lower():
            tried.append(f"{url}: SHA-256 {got}, expected {sha}")
            continue
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ort-headers-", dir=cache))
        try:
            _unpack_headers(data, tmp / "include")
            if include.parent.exists():
                shutil.rmtree(include.parent)
            tmp.rename(include.parent)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            tried.append(f"{url}: {e}")
            continue
        return include
    lines = "\n".join(f"  - {t}" for t in tried)
    raise FetchError(
        "could not fetch ONNX Runtime's headers. Tried:\n" + lines + "\n"
        "Set ORT_INCLUDE_DIR to the include/ folder of an ONNX Runtime release (the folder holding "
        f"{HEADER}, 1.21 or newer), e.g.\n"
        "  ORT_INCLUDE_DIR=/opt/onnxruntime-linux-x64-1.21.0/include pip install .\n"
        "or give another archive with CAFFE2_ORT_HEADERS_URL and CAFFE2_ORT_HEADERS_SHA256."
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: %(default)s -> user cache)")
    p.add_argument("--source", default=os.environ.get("CAFFE2_ORT_HEADERS_URL"), help="URL or file of a .deb/.tgz")
    p.add_argument("--sha256", default=os.environ.get("CAFFE2_ORT_HEADERS_SHA256"), help="its SHA-256")
    args = p.parse_args(argv)
    if bool(args.source) != bool(args.sha256):
        print("error: --source and --sha256 (CAFFE2_ORT_HEADERS_URL, CAFFE2_ORT_HEADERS_SHA256) go together",
              file=sys.stderr)
        return 2
    sources = [(args.source, args.sha256)] if args.source else PINNED
    try:
        print(fetch(sources, args.cache or cache_root()))
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
