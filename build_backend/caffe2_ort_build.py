"""In-tree PEP 517 backend: scikit-build-core, plus the CUDA switch and an honest manylinux tag.

CUDA: the config setting ``caffe2-ort.cuda`` (``pip install . -C caffe2-ort.cuda=on``) or the environment
variable CAFFE2_ORT_CUDA, each ``on``, ``off`` or ``auto`` (default). ``auto`` builds the CUDA plugin when
nvcc is found (CUDACXX, PATH, /usr/local/cuda/bin). Whenever it is built, the build requirements gain the
nvidia-cudnn-cu13 wheel (cuDNN's headers and libraries, found by cmake/cuda.cmake through the build's
Python), and CMake gets CAFFE2_ORT_CUDA=ON; otherwise OFF.

Tag: the library uses no Python ABI (``wheel.py-api = "py3"``), so the wheel is py3-none-<platform>. The
platform is computed from the built libraries: the newest GLIBC_2.x symbol version any of them needs
gives manylinux_2_x, never below the project's floor manylinux_2_28 (the oldest glibc it is tested
against is 2.31; auditwheel in CI checks the tag). A build on a host whose glibc adds newer symbols
gets a narrower tag, never a false one.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import struct
import sys
import zipfile
from pathlib import Path

from scikit_build_core import build as _skb

CUDA_SETTING = "caffe2-ort.cuda"
CUDA_ENV = "CAFFE2_ORT_CUDA"
CUDNN_REQUIREMENT = "nvidia-cudnn-cu13"
FLOOR = (2, 28)  # manylinux_2_28


def _nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def cuda_mode(config_settings) -> str:
    raw = (config_settings or {}).get(CUDA_SETTING)
    source = f"-C {CUDA_SETTING}"
    if raw is None:
        raw, source = os.environ.get(CUDA_ENV, "auto"), CUDA_ENV
    value = str(raw).strip().lower()
    aliases = {"on": "on", "1": "on", "true": "on", "yes": "on", "off": "off", "0": "off", "false": "off",
               "no": "off", "auto": "auto", "": "auto"}
    if value not in aliases:
        raise ValueError(f"{source}={raw!r}: expected on, off or auto")
    return aliases[value]


def builds_cuda(config_settings) -> bool:
    mode = cuda_mode(config_settings)
    if mode == "on" and _nvcc() is None:
        raise RuntimeError("the CUDA build was asked for (on) but nvcc was not found: put it on PATH or set CUDACXX")
    return mode == "on" or (mode == "auto" and _nvcc() is not None)


def _skb_settings(config_settings, for_build: bool):
    settings = {k: v for k, v in (config_settings or {}).items() if k != CUDA_SETTING}
    if for_build:
        cuda = builds_cuda(config_settings)
        settings["cmake.define.CAFFE2_ORT_CUDA"] = "ON" if cuda else "OFF"
        settings["cmake.define.Python3_EXECUTABLE"] = sys.executable
        if cuda and _nvcc() and not os.environ.get("CUDACXX"):
            settings["cmake.define.CMAKE_CUDA_COMPILER"] = _nvcc()
    return settings


# --- PEP 517 hooks -----------------------------------------------------------------------------------

def get_requires_for_build_sdist(config_settings=None):
    return _skb.get_requires_for_build_sdist(_skb_settings(config_settings, False))


def build_sdist(sdist_directory, config_settings=None):
    return _skb.build_sdist(sdist_directory, _skb_settings(config_settings, False))


def get_requires_for_build_wheel(config_settings=None):
    reqs = list(_skb.get_requires_for_build_wheel(_skb_settings(config_settings, False)))
    return reqs + [CUDNN_REQUIREMENT] if builds_cuda(config_settings) else reqs


def get_requires_for_build_editable(config_settings=None):
    reqs = list(_skb.get_requires_for_build_editable(_skb_settings(config_settings, False)))
    return reqs + [CUDNN_REQUIREMENT] if builds_cuda(config_settings) else reqs


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _skb.prepare_metadata_for_build_wheel(metadata_directory, _skb_settings(config_settings, False))


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _skb.prepare_metadata_for_build_editable(metadata_directory, _skb_settings(config_settings, False))


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _skb.build_wheel(wheel_directory, _skb_settings(config_settings, True), metadata_directory)
    return retag_manylinux(Path(wheel_directory) / name).name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _skb.build_editable(wheel_directory, _skb_settings(config_settings, True), metadata_directory)


# --- the manylinux tag -------------------------------------------------------------------------------

def glibc_versions_needed(elf: bytes):
    """The GLIBC_x.y versions an ELF64 little-endian file requires (its .gnu.version_r section)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    found = set()
    for _name, sh_type, _flags, _addr, offset, _size, link, info, _align, _entsize in sections:
        if sh_type != 0x6FFFFFFE:  # SHT_GNU_verneed
            continue
        strtab = sections[link][4]
        pos = offset
        for _ in range(info):
            _ver, _cnt, _file, aux, nxt = struct.unpack_from("<HHIII", elf, pos)
            apos = pos + aux
            while True:
                _hash, _flags2, _other, vname, anext = struct.unpack_from("<IHHII", elf, apos)
                end = elf.index(b"\0", strtab + vname)
                name = elf[strtab + vname:end].decode("ascii", "replace")
                m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", name)
                if m:
                    found.add((int(m.group(1)), int(m.group(2))))
                if anext == 0:
                    break
                apos += anext
            if nxt == 0:
                break
            pos += nxt
    return found


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def retag_manylinux(wheel: Path) -> Path:
    """Rewrites a py3-none-linux_<arch> wheel as py3-none-manylinux_2_<x>_<arch> (file name, WHEEL, RECORD)."""
    m = re.fullmatch(r"(.+)-py3-none-linux_(x86_64|aarch64)\.whl", wheel.name)
    if not m:
        return wheel
    stem, arch = m.groups()
    with zipfile.ZipFile(wheel) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    needed = {FLOOR}
    for info, data in entries:
        if data[:4] == b"\x7fELF":
            needed |= glibc_versions_needed(data)
    major, minor = max(needed)
    platform = f"manylinux_{major}_{minor}_{arch}"
    wheel_file = next(i.filename for i, _ in entries if re.fullmatch(r"[^/]+\.dist-info/WHEEL", i.filename))
    record_file = wheel_file[: -len("WHEEL")] + "RECORD"
    out_entries = []
    for info, data in entries:
        if info.filename == wheel_file:
            text = data.decode()
            text = re.sub(r"(?m)^Tag: py3-none-linux_\w+$", f"Tag: py3-none-{platform}", text)
            data = text.encode()
        out_entries.append((info, data))
    rows = []
    for info, data in out_entries:
        if info.filename == record_file:
            continue
        rows.append([info.filename, _record_hash(data), str(len(data))])
    rows.append([record_file, "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    target = wheel.with_name(f"{stem}-py3-none-{platform}.whl")
    tmp = target.with_suffix(".whl.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info, data in out_entries:
            if info.filename == record_file:
                data = buf.getvalue().encode()
            zout.writestr(info, data)
    wheel.unlink()
    tmp.rename(target)
    return target
