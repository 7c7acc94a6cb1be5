"""Static check: every TensorRT API that the runtime/backends/trt package uses (every .py file in
it, each checked on its own) exists in TensorRT 10.3 (JetPack 6) AND 11.4, unless its line
carries a `# trt-compat: NAME reason` marker (the access sits behind a version or feature
guard). No TensorRT installation is needed: the API surfaces are
the binding introspection dumps in shared/reference/tensorrt (api_10.3.0.json, api_11.4.0.106.json).

How accesses are classified (ast, no execution):
- `trt.X`, `trt.X.Y`: module names and class members, checked exactly.
- `obj.attr` where `obj` is a TRT object: its class comes from an assignment (`x = trt.Builder(..)`,
  `x = config.get_timing_cache()` with the return type read from the dump's signature) or from the
  naming convention in RECEIVERS (the backend names its engines `engine`, contexts `context`,
  ...).
- any other `obj.attr` (not on `self`): flagged if `attr` exists in only one of the two versions
  or is a pre-10.3 API (REMOVED_BEFORE_10_3) - a safety net for receivers the checker cannot type.
- `getattr(obj, "NAME")` / `hasattr(obj, "NAME")` count as accesses of NAME.

A marker covers accesses of the NAMEs it lists on its own line and on the next line.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _reference() -> Path:
    """shared/reference/tensorrt beside the checkout or beside one of its parent folders (a CI
    clone may sit deeper than the working checkout); MLVOS_TRT_REFERENCE overrides."""
    if os.environ.get("MLVOS_TRT_REFERENCE"):
        return Path(os.environ["MLVOS_TRT_REFERENCE"])
    for folder in ROOT.parents:
        candidate = folder / "shared" / "reference" / "tensorrt"
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "reference" / "tensorrt"


REFERENCE = _reference()
DUMPS = {"10.3": "api_10.3.0.json", "11.4": "api_11.4.0.106.json"}
LEAN_DUMP = "api_lean_11.4.json"
TRT_PACKAGE = ROOT / "runtime" / "backends" / "trt"
CUDA_SOURCE = ROOT / "runtime" / "backends" / "cuda_mem.py"

# Names the backend gives TRT objects whose type the checker cannot infer from an assignment
# (overloaded bindings such as Runtime.deserialize_cuda_engine have no return type in the dump).
RECEIVERS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "trt_profile": "IOptimizationProfile",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "logger": "ILogger",
    "error": "ParserError",
}
# APIs removed in TensorRT 10.0 (the 8.6 -> 10.0 binding diff in tensorrt_facts.md §1.2): absent
# from both dumps, so only this list lets the checker flag them on receivers it cannot type.
REMOVED_BEFORE_10_3 = frozenset(
    """
    execute execute_async execute_async_v2 set_binding_shape get_binding_shape get_shape
    get_binding_index get_binding_name get_binding_dtype get_binding_format
    get_binding_vectorized_dim get_binding_bytes_per_component binding_is_input
    is_shape_binding is_execution_binding num_bindings max_batch_size get_profile_shape
    build_engine build_cuda_engine max_workspace_size
    """.split()
)
MARKER = re.compile(
    r"#\s*trt-compat:\s*(?P<names>[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_]\w*)*)(?P<why>.*)"
)


# ------------------------------------------------------------------------------- API surfaces
@dataclass
class Api:
    version: str
    classes: dict[str, set[str]]  # class -> members (methods, properties, enum values)
    returns: dict[tuple[str, str], str]  # (class, method) -> TRT class it returns
    top: set[str]  # module-level names

    @property
    def vocabulary(self) -> set[str]:
        return set(self.classes).union(*self.classes.values()) | self.top


def load_api(path: Path) -> Api:
    data = json.loads(path.read_text())
    classes: dict[str, set[str]] = {}
    returns: dict[tuple[str, str], str] = {}
    for cls, members in data["classes"].items():
        names = {m for m in members if m != "__enum__"}
        names |= set(members.get("__enum__") or [])
        classes[cls] = names
        for m, doc in members.items():
            hit = re.search(r"-> (?:tensorrt\w*\.tensorrt\w*\.|nvonnxparser::I)(\w+)\s*$", str(doc))
            if hit and hit.group(1) in data["classes"]:
                returns[(cls, m)] = hit.group(1)
    top = set(classes) | set(data.get("functions", {})) | {"__version__"}
    return Api(data["__version__"], classes, returns, top)


@pytest.fixture(scope="module")
def apis() -> dict[str, Api]:
    if not REFERENCE.is_dir():
        pytest.skip(f"TensorRT API dumps not found at {REFERENCE} (shared/reference/tensorrt)")
    return {v: load_api(REFERENCE / f) for v, f in DUMPS.items()}


# ------------------------------------------------------------------------------------ checker
@dataclass
class Access:
    line: int
    owner: str  # "trt" (module), "Class" (class-level), "Class()" (instance) or "?" (unknown)
    attr: str
    text: str
    file: str = ""  # the module's file name (check_package)


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    guarded: list[tuple[Access, str]] = field(default_factory=list)  # (access, reason)
    unused_markers: list[str] = field(default_factory=list)


def _markers(source: str) -> dict[int, tuple[set[str], str, int]]:
    """line -> (names, reason, marker line) for every line a marker covers."""
    out: dict[int, tuple[set[str], str, int]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        m = MARKER.search(tok.string)
        if not m:
            continue
        names = {n.strip() for n in m.group("names").split(",")}
        why = m.group("why").strip(" -:;")
        line = tok.start[0]
        for covered in (line, line + 1):
            out.setdefault(covered, (set(), why, line))[0].update(names)
    return out


class _Checker(ast.NodeVisitor):
    def __init__(self, apis: dict[str, Api]):
        self.apis = list(apis.values())
        self.aliases = {"trt"}
        self.types: dict[str, str] = {}  # variable / attribute name -> TRT class
        self.accesses: list[Access] = []

    # --- typing of expressions
    def _key(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id.lstrip("_")
        if isinstance(node, ast.Attribute):
            return node.attr.lstrip("_")
        return None

    def cls_of(self, node: ast.AST) -> str | None:
        """TRT class of the object `node` evaluates to, if known."""
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                if self._is_module(f.value):
                    return f.attr if any(f.attr in a.classes for a in self.apis) else None
                owner = self.cls_of(f.value)
                if owner:
                    for a in self.apis:
                        if (owner, f.attr) in a.returns:
                            return a.returns[(owner, f.attr)]
            return None
        key = self._key(node)
        if key is None or (isinstance(node, ast.Name) and node.id in ("self", "cls")):
            return None
        return self.types.get(key) or RECEIVERS.get(key)

    # --- visitors
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in ("tensorrt", "tensorrt_lean"):
                self.aliases.add(a.asname or a.name)

    def visit_Assign(self, node: ast.Assign) -> None:
        cls = self.cls_of(node.value)
        for t in node.targets:
            key = self._key(t)
            if cls and key:
                self.types[key] = cls
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (
            isinstance(f, ast.Name)
            and f.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            self._record(node, node.args[0], node.args[1].value)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._record(node, node.value, node.attr)
        self.generic_visit(node)

    def _is_module(self, node: ast.AST) -> bool:
        """`trt`, or an attribute holding the module such as `self._trt`."""
        if isinstance(node, ast.Name):
            return node.id in self.aliases
        return isinstance(node, ast.Attribute) and node.attr.lstrip("_") in self.aliases

    def _record(self, node: ast.AST, value: ast.AST, attr: str) -> None:
        text = ast.unparse(node)
        if self._is_module(value):
            owner = "trt"
        elif isinstance(value, ast.Attribute) and self._is_module(value.value):
            owner = value.attr
        elif isinstance(value, ast.Name) and value.id in ("self", "cls"):
            return  # the module's own classes
        else:
            cls = self.cls_of(value)
            owner = f"{cls}()" if cls else "?"
        self.accesses.append(Access(node.lineno, owner, attr, text))


def check_source(source: str, apis: dict[str, Api], file: str = "") -> Report:
    """Run the checker on `source` (one module, named `file` in messages); Report.findings lists
    every unportable access."""
    tree = ast.parse(source)
    checker = _Checker(apis)
    # Two passes: the first learns variable types from assignments anywhere in the module.
    checker.visit(tree)
    checker.accesses.clear()
    checker.visit(tree)
    for acc in checker.accesses:
        acc.file = file
    at = f"{file} " if file else ""
    markers = _markers(source)
    used_markers: set[int] = set()
    report = Report(accesses=checker.accesses)
    versions = list(apis.values())
    one_version_only = set.symmetric_difference(*(a.vocabulary for a in versions))
    for acc in checker.accesses:
        if acc.owner == "trt":
            missing = [a.version for a in versions if acc.attr not in a.top]
        elif acc.owner == "?":
            bad = acc.attr in one_version_only or acc.attr in REMOVED_BEFORE_10_3
            missing = [a.version for a in versions if acc.attr not in a.vocabulary] if bad else []
            if bad and not missing:
                missing = ["(removed in 10.0)"]
        else:
            cls = acc.owner.rstrip("()")
            missing = [a.version for a in versions if acc.attr not in a.classes.get(cls, set())]
        if not missing:
            continue
        names, why, marker_line = markers.get(acc.line, (set(), "", 0))
        where = f"{at}line {acc.line}: {acc.text} ({acc.owner}.{acc.attr})"
        if acc.attr in names and why:
            exists_somewhere = any(acc.attr in a.vocabulary for a in versions)
            if exists_somewhere:
                used_markers.add(marker_line)
                report.guarded.append((acc, why))
                continue
        report.findings.append(f"{where} missing in TensorRT {', '.join(missing)}")
    for line, (_, _, marker_line) in sorted(markers.items()):
        if line == marker_line and marker_line not in used_markers:
            report.unused_markers.append(f"{at}line {marker_line}")
    return report


def trt_sources() -> list[Path]:
    """Every module of the TensorRT backend package, subpackages included."""
    return sorted(TRT_PACKAGE.rglob("*.py"))


def check_package(apis: dict[str, Api]) -> Report:
    """check_source on every module of the backend package, merged into one Report. Each module
    is checked on its own: variable types learned in one module do not carry into another (as in
    Python), so a TRT object handed between modules must follow the RECEIVERS naming."""
    sources = trt_sources()
    assert TRT_PACKAGE.joinpath("__init__.py") in sources, f"{TRT_PACKAGE} is not a package"
    merged = Report()
    for path in sources:
        report = check_source(path.read_text(), apis, str(path.relative_to(TRT_PACKAGE)))
        merged.findings += report.findings
        merged.accesses += report.accesses
        merged.guarded += report.guarded
        merged.unused_markers += report.unused_markers
    return merged


# -------------------------------------------------------------------------------------- tests
def test_trt_backend_uses_only_portable_api(apis):
    report = check_package(apis)
    assert not report.findings, (
        "TensorRT APIs not present in both 10.3 and 11.4 (guard them and mark the line with "
        "`# trt-compat: NAME reason`, or use the portable API):\n  " + "\n  ".join(report.findings)
    )
    assert not report.unused_markers, f"stale trt-compat markers: {report.unused_markers}"
    # The only version-specific APIs are those of the 10.x fp16 flag path: BuilderFlag.FP16 and
    # the precision constraints that pin the export's FP32 nodes.
    guarded = {(acc.owner, acc.attr) for acc, _ in report.guarded}
    assert guarded == {
        ("BuilderFlag", "FP16"), ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"),
        ("ILayer()", "precision"), ("ILayer()", "set_output_type"),
    }, report.guarded


def test_checker_is_not_vacuous(apis):
    """The checker must actually type the objects the backend works with; if a refactor renames
    them, extend RECEIVERS rather than letting accesses fall into the untyped bucket."""
    report = check_package(apis)
    typed = {a.owner for a in report.accesses if a.owner.endswith("()")}
    for cls in (
        "Builder",
        "INetworkDefinition",
        "OnnxParser",
        "IBuilderConfig",
        "IOptimizationProfile",
        "ITimingCache",
        "Runtime",
        "ICudaEngine",
        "IExecutionContext",
        "ITensor",
        "ParserError",
    ):
        assert f"{cls}()" in typed, f"no access on a {cls} was recognised; typed: {typed}"
    module_names = {a.attr for a in report.accesses if a.owner == "trt"}
    assert {
        "Builder",
        "Runtime",
        "OnnxParser",
        "Logger",
        "IProgressMonitor",
        "nptype",
    } <= module_names


PLANTED = {
    "calibrator (removed in 11)": "config = builder.create_builder_config()\n"
    "config.int8_calibrator = None\n",
    "FP16 flag unguarded": "config.set_flag(trt.BuilderFlag.FP16)\n",
    "FP16 via getattr unguarded": "flag = getattr(trt.BuilderFlag, 'FP16')\n",
    "bindings API (removed in 10)": "idx = engine.get_binding_index('frame')\n",
    "execute_async_v2": "context.execute_async_v2([0, 0], 0)\n",
    "untyped receiver, removed in 10": "thing.set_binding_shape(0, (1, 3))\n",
    "untyped receiver, 10.3 only": "ok = b.platform_has_fast_fp16\n",
    "11.x-only member": "cfg = builder.create_builder_config()\n"
    "cfg.tiling_optimization_level = 1\n",
    "typo in a module name": "logger = trt.Loger(trt.Logger.WARNING)\n",
    "EXPLICIT_BATCH": "flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)\n",
    "device_memory_size (removed in 11)": "n = engine.device_memory_size\n",
    "marker naming another attribute": "# trt-compat: FP8 wrong name\n"
    "config.set_flag(getattr(trt.BuilderFlag, 'FP16'))\n",
    "marker without a reason": "config.set_flag(getattr(trt.BuilderFlag, 'FP16'))"
    "  # trt-compat: FP16\n",
}


@pytest.mark.parametrize("source", PLANTED.values(), ids=PLANTED.keys())
def test_checker_catches_planted_removed_api(apis, source):
    report = check_source("import tensorrt as trt\n" + source, apis)
    assert report.findings, f"not caught: {source!r}"


def test_checker_accepts_guarded_and_portable_code(apis):
    source = (
        "import tensorrt as trt\n"
        "builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "config = builder.create_builder_config()\n"
        "# trt-compat: FP16 10.x only, taken only when the flag exists\n"
        "config.set_flag(getattr(trt.BuilderFlag, 'FP16'))\n"
        "if hasattr(trt.BuilderFlag, 'FP16'):  # trt-compat: FP16 feature probe\n"
        "    pass\n"
        "context = engine.create_execution_context()\n"
        "context.set_input_shape('frame', (1, 3, 64, 64))\n"
        "context.execute_async_v3(0)\n"
        "self.precision = 'fp16'\n"
    )
    report = check_source(source, apis)
    assert not report.findings, report.findings
    assert len(report.guarded) == 2 and not report.unused_markers


def test_runner_side_is_in_the_lean_runtime(apis):
    """What TrtRunner touches after the build exists in tensorrt_lean 11.4 too, so the runner can
    move to the lean runtime (version-compatible engines) without API changes."""
    lean = load_api(REFERENCE / LEAN_DUMP)
    report = check_package(apis)
    runtime_side = {"Runtime()", "ICudaEngine()", "IExecutionContext()"}
    missing = [
        f"{a.file} line {a.line}: {a.text}"
        for a in report.accesses
        if a.owner in runtime_side and a.attr not in lean.classes[a.owner.rstrip("()")]
    ]
    assert not missing, missing


def test_cuda_python_calls_exist():
    """Every cuda-python runtime attribute cuda_mem.py uses exists in the installed cuda-python."""
    rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    tree = ast.parse(CUDA_SOURCE.read_text())
    used = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        rooted = (isinstance(base, ast.Name) and base.id == "rt") or (
            isinstance(base, ast.Call) and getattr(base.func, "id", None) == "cudart"
        )
        if rooted:
            used.add(".".join(chain))
    assert len(used) > 15, used
    missing = []
    for dotted in sorted(used):
        obj = rt
        for part in dotted.split("."):
            if not hasattr(obj, part):
                missing.append(dotted)
                break
            obj = getattr(obj, part)
    assert not missing, f"not in cuda.bindings.runtime: {missing}"
