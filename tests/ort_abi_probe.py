"""Calls the plugin's RegisterCustomOps directly through ctypes, with a real or a fake OrtApiBase.

    python tests/ort_abi_probe.py LIBRARY SCENARIO

Run in a subprocess (the plugin fixes its API table once per process). Prints one JSON object:
{"status": null | "<error message>", "probes": [versions GetApi was asked for]}. Scenarios:
  null-base             RegisterCustomOps(options, NULL) in a process that has onnxruntime loaded
  null-base-after       the same, after one ordinary registration through SessionOptions
  runtime-2.0           a base reporting version "2.0.0" that offers every API up to the real one
  runtime-api-17        a base whose GetApi returns NULL above 17 (a 1.17 runtime)
  runtime-api-16        a base whose GetApi returns NULL above 16 (too old)
"""

import ctypes
import json
import sys
from pathlib import Path

import onnxruntime as ort

library, scenario = sys.argv[1], sys.argv[2]
capi = Path(ort.__file__).parent / "capi"
runtime = None
for cand in sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("onnxruntime_pybind11_state*.so")):
    lib = ctypes.CDLL(str(cand))
    if hasattr(lib, "OrtGetApiBase"):
        runtime = lib
        break
if runtime is None:
    print(json.dumps({"skip": f"no library under {capi} exports OrtGetApiBase"}))
    sys.exit(0)


class OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)),
                ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]


runtime.OrtGetApiBase.restype = ctypes.POINTER(OrtApiBase)
real = runtime.OrtGetApiBase().contents
api1 = real.GetApi(1)
table = ctypes.cast(api1, ctypes.POINTER(ctypes.c_void_p))
# OrtApi's first members never move: CreateStatus(0), GetErrorCode(1), GetErrorMessage(2), ..., CreateSessionOptions(10).
get_error_message = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)(table[2])
create_session_options = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))(table[10])

options = ctypes.c_void_p()
assert create_session_options(ctypes.byref(options)) is None

plugin = ctypes.CDLL(library)
plugin.RegisterCustomOps.restype = ctypes.c_void_p
plugin.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]

probes = []
top = {"runtime-2.0": 10**6, "runtime-api-17": 17, "runtime-api-16": 16}.get(scenario)
version = b"2.0.0" if scenario == "runtime-2.0" else real.GetVersionString()


def fake_get_api(v):
    probes.append(v)
    return real.GetApi(v) if v <= top else None


fake = OrtApiBase(OrtApiBase._fields_[0][1](fake_get_api), OrtApiBase._fields_[1][1](lambda: version))

if scenario == "null-base-after":
    ort.SessionOptions().register_custom_ops_library(library)
if scenario.startswith("null-base"):
    status = plugin.RegisterCustomOps(options, None)
else:
    status = plugin.RegisterCustomOps(options, ctypes.addressof(fake))
message = get_error_message(status).decode() if status else None
print(json.dumps({"status": message, "probes": probes}))
