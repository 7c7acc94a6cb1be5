"""Where read_decoder's time goes, node by node: onnxruntime's own profiler on the graph at a
full bank, for each (resolution, object count). `mlvos profile nodes`.

The report groups node time by operator type and by the part of the graph a node belongs to
(memory read, decoder, soft aggregation), and splits the decoder's time into what runs once per
frame (the query's skip and value convolutions, broadcast over objects) and what runs per object,
so the per-object slope of read+decode is explained rather than only measured.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import (
    Graph,
    ort_session_config,
    padded_size,
    parse_resolution,
    resolve_shape,
)
from mlvos.runtime.spec import Tensor as T

logger = logging.getLogger(__name__)

# Node-name scopes of the exported read_decoder (torch module paths) -> part of the graph. The
# refine blocks' skip convolutions (convFS, ResFS) take the query's skips: once per frame.
PARTS = tuple((f"/decoder/{rf}/{m}/", "decoder, per frame")
              for rf in ("RF3", "RF2") for m in ("convFS", "ResFS"))
PARTS += (("/decoder/", "decoder, per object"), ("/aggregate/", "aggregation"))


def _part(name: str) -> str:
    for prefix, part in PARTS:
        if name.startswith(prefix) or f"/{prefix.strip('/')}/" in name:
            return part
    return "memory read"


def _feeds(info, objects: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random read_decoder inputs with every slot filled (the steady state of a video)."""
    rng = np.random.default_rng(seed)
    env = {"O": objects, "H": height, "W": width}
    feeds = {}
    for spec in info.inputs:
        shape = resolve_shape(spec.shape, env)
        if spec.name == T.BANK_VALID:
            feeds[spec.name] = np.ones(shape, spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def profile_nodes(export_dir: str | os.PathLike, *, resolutions: list[str], objects: list[int],
                  precision: str = "fp32", iters: int = 3, threads: int | None = 2
                  ) -> dict[str, Any]:
    """Per-node times of read_decoder at each resolution and object count.

    Returns:
        {"configs": [{resolution, padded, objects, ms_per_run, by_part, by_op, top_nodes}], ...}
        with milliseconds per run (mean over `iters` runs after one warm-up).
    """
    import onnxruntime as ort

    manifest = Manifest.load(export_dir)
    info = manifest.graph(Graph.READ_DECODER, precision)
    configs = []
    for res in resolutions:
        label, h, w = parse_resolution(res)
        ph, pw = padded_size(h, w, manifest.stride)
        for k in objects:
            feeds = _feeds(info, k, ph, pw)
            with tempfile.TemporaryDirectory() as tmp:
                opts = ort.SessionOptions()
                if threads:
                    opts.intra_op_num_threads = threads
                for key, value in ort_session_config(precision).items():  # as the runtime's
                    opts.add_session_config_entry(key, value)
                opts.enable_profiling = True
                opts.profile_file_prefix = str(Path(tmp) / "rd")
                sess = ort.InferenceSession(str(info.path), opts,
                                            providers=["CPUExecutionProvider"])
                sess.run(None, feeds)  # warm-up (first-run allocations)
                t0 = time.perf_counter()
                for _ in range(iters):
                    sess.run(None, feeds)
                wall = (time.perf_counter() - t0) / iters * 1e3
                trace = json.loads(Path(sess.end_profiling()).read_text())
            configs.append(_summarize(trace, label, (ph, pw), k, wall, iters))
            logger.info(f"read_decoder {label} x{k}: {wall:.1f} ms/run")
    return {"export": str(export_dir), "precision": precision, "threads": threads,
            "iters": iters, "bank_key": list(info.input(T.BANK_KEY).shape), "configs": configs}


def _summarize(trace: list[dict], label: str, padded: tuple[int, int], objects: int,
               wall_ms: float, iters: int) -> dict[str, Any]:
    by_op: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    op_of: dict[str, str] = {}
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    skip_until = runs[0]["ts"] + runs[0]["dur"] if runs else 0  # the warm-up run
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < skip_until:
            continue
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        ms = e["dur"] / 1e3 / iters
        by_op[op] += ms
        by_part[_part(node)] += ms
        by_node[node] += ms
        op_of[node] = op
    top = sorted(by_node.items(), key=lambda kv: -kv[1])[:12]
    return {
        "resolution": label, "padded": list(padded), "objects": objects,
        "ms_per_run": wall_ms, "kernel_ms": sum(by_node.values()),
        "by_part": dict(sorted(by_part.items(), key=lambda kv: -kv[1])),
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "top_nodes": [{"node": n, "op": op_of[n], "ms": ms} for n, ms in top],
    }


def nodes_table(report: dict[str, Any]) -> str:
    """Markdown: one row per configuration, ms per part and the three costliest op types."""
    lines = [f"read_decoder per node ({report['precision']}, {report['threads']} threads, "
             f"bank_key {report['bank_key']}; ms per run, onnxruntime profiler)", "",
             "| resolution | objects | run ms | memory read | decoder per frame | "
             "decoder per object | aggregation | top ops |",
             "|---|---|---|---|---|---|---|---|"]
    for c in report["configs"]:
        parts = c["by_part"]
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in list(c["by_op"].items())[:3])
        lines.append(
            f"| {c['resolution']} | {c['objects']} | {c['ms_per_run']:.1f} | "
            f"{parts.get('memory read', 0):.1f} | {parts.get('decoder, per frame', 0):.1f} | "
            f"{parts.get('decoder, per object', 0):.1f} | {parts.get('aggregation', 0):.1f} | "
            f"{ops} |")
    return "\n".join(lines)
