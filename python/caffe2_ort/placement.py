"""Where ONNX Runtime ran each node of a model: the execution provider of every kernel it executed, and
the Memcpy nodes it inserted between providers.

A node that has no kernel on the requested provider silently runs on the CPU, with copies of its inputs
and outputs around it (the most common cause of a slow "GPU" session; for the ai.caffe2 ops it means a
library without CUDA kernels, or the CPU onnxruntime shadowing onnxruntime-gpu). ORT records the
provider of each executed kernel in its session profile; :func:`placement` runs the model once with
profiling on and reads it back. ``caffe2-ort run ... --placement`` prints the same report.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .opdefs import DOMAIN


@dataclass(frozen=True)
class NodeRun:
    name: str      # the node's name (unnamed nodes of the given model are named "<op_type>_<index>")
    domain: str    # "" for ai.onnx; the model's domain, or "" for nodes ORT created (fusions, Memcpy)
    op_type: str
    provider: str


@dataclass(frozen=True)
class Placement:
    requested: tuple  # the providers the session was asked for, in order
    nodes: tuple      # NodeRun of every node ORT executed, in the order of its first execution

    @property
    def memcpy(self) -> tuple:
        """The copies ORT inserted between providers (MemcpyToHost / MemcpyFromHost nodes)."""
        return tuple(n for n in self.nodes if n.op_type.startswith("Memcpy"))

    def off_provider(self, provider: str | None = None, domain: str = DOMAIN) -> tuple:
        """The nodes of ``domain`` that did not run on ``provider`` (default: the first requested)."""
        provider = provider or self.requested[0]
        return tuple(n for n in self.nodes if n.domain == domain and n.provider != provider)

    def format(self) -> str:
        """The report ``caffe2-ort run --placement`` prints."""
        lines = [f"placement (requested {', '.join(self.requested)}):"]
        by_provider = {}
        for n in self.nodes:
            if not n.op_type.startswith("Memcpy"):
                by_provider.setdefault(n.provider, Counter())[_label(n)] += 1
        for provider, ops in by_provider.items():
            total = sum(ops.values())
            listed = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in sorted(ops.items()))
            lines.append(f"  {provider}: {total} node{'s' if total != 1 else ''} ({listed})")
        copies = self.memcpy
        lines.append(f"  Memcpy nodes inserted by ORT: {len(copies) or 'none'}"
                     + (f" ({', '.join(n.op_type for n in copies)})" if copies else ""))
        for n in self.off_provider():
            lines.append(f"  warning: {DOMAIN} {n.op_type} node '{n.name}' ran on {n.provider}, not on "
                         f"{self.requested[0]} (does the loaded library have kernels for that provider? "
                         "`python -m caffe2_ort check` says)")
        return "\n".join(lines)


def _label(n: NodeRun) -> str:
    return f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type


def named_copy(model):
    """A copy of an onnx ModelProto whose unnamed main-graph nodes are named "<op_type>_<index>" (kept
    unique), so profile events map back to the nodes."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = {n.name for n in m.graph.node if n.name}
    for i, node in enumerate(m.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)
    return m


def from_profile(events, model, requested) -> Placement:
    """A :class:`Placement` from ORT's profile events (the parsed JSON list) of a run of ``model`` (a
    ModelProto whose nodes all have names, see :func:`named_copy`)."""
    domains = {n.name: n.domain for n in model.graph.node}
    seen, nodes = set(), []
    for e in events:
        args = e.get("args") or {}
        name = e.get("name", "")
        if e.get("cat") != "Node" or "op_name" not in args or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        if node in seen:
            continue
        seen.add(node)
        nodes.append(NodeRun(node, domains.get(node, ""), args["op_name"], args.get("provider", "")))
    return Placement(tuple(requested), tuple(nodes))


def placement(model, feeds, providers=("CPUExecutionProvider",), session_options=None) -> Placement:
    """Runs ``model`` (an onnx ModelProto or a path) once on ``feeds`` with ``providers`` and the ai.caffe2
    ops registered, and returns where each executed node ran. ``session_options`` (optional) is used as
    given, with profiling turned on."""
    import onnx
    import onnxruntime as ort

    from ._library import register

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = named_copy(model)
    so = session_options or ort.SessionOptions()
    if session_options is None:
        register(so)
    with tempfile.TemporaryDirectory(prefix="caffe2_ort_placement_") as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return from_profile(events, model, [p if isinstance(p, str) else p[0] for p in providers])
