"""The house rules of the package layout: no import circle anywhere in pyengine (function-level imports included:
a lazy import is still a dependency), and each layer imports only downwards."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _modules():
    mods = {}
    for base, pkg in (("pyengine", "pyengine"), ("kernels", "pyengine.kernels")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, base)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, base))[:-3].replace(os.sep, ".")
                name = pkg if rel == "__init__" else pkg + "." + rel.removesuffix(".__init__")
                mods[name] = os.path.join(dirpath, f)
    return mods


def import_graph():
    """``{module: {modules it imports}}`` inside pyengine (``from . import x`` counts as importing x only)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".")
                    parts = parts[:len(parts) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs or ([base] if node.module else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(" <-> ".join(c) + ": " + "; ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c)
                       for c in found)
    assert not found, f"import circles:\n{detail}"


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# pyengine.keypoints, one concern per module, each importing only those before it (and the package imports them).
KEYPOINT_LAYERS = ("pyengine.keypoints.common", "pyengine.keypoints.layouts", "pyengine.keypoints.readers",
                   "pyengine.keypoints.prepare")


def test_keypoint_modules_import_only_downwards():
    graph = import_graph()
    assert not graph["pyengine.safe_pickle"], "safe_pickle (the pickle allow-lists) imports no pyengine module"
    for m in ("pyengine.checkpoint", "pyengine.keypoints.readers"):  # both policies' users read them from there
        assert "pyengine.safe_pickle" in graph[m], m
    for i, m in enumerate(KEYPOINT_LAYERS):
        allowed = set(KEYPOINT_LAYERS[:i]) | {"pyengine.skeleton", "pyengine.safe_pickle"}
        assert graph[m] <= allowed, f"{m} imports {sorted(graph[m] - allowed)}"


def test_low_layers_import_nothing_above_them():
    graph = import_graph()
    low = {"pyengine.backends", "pyengine.errors", "pyengine.skeleton", "pyengine.cuda_graphs", "pyengine.twin",
           "pyengine.kernels._common", "pyengine.safe_pickle", *KEYPOINT_LAYERS, "pyengine.keypoints"}
    high = {"pyengine.engine", "pyengine.load", "pyengine.cli", "pyengine.lift", "pyengine.verify", "pyengine.bench"}
    for m in low:
        assert not graph[m] & high, f"{m} imports {sorted(graph[m] & high)}"
    for m in (k for k in graph if k.startswith(("pyengine.ops.", "pyengine.kernels."))):
        assert not graph[m] & (high | {"pyengine.nn", "pyengine.arch"}), f"{m} imports {sorted(graph[m] & high)}"
