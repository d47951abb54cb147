"""A plain source checkout (``python setup.py build_ext --inplace``, as the GPU box builds) imports
``pyengine.kernels`` from ``kernels/`` without pip's editable finder."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/<folder>/ -> repo

SCRIPT = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # no pip editable finder
sys.path_importer_cache.clear()
sys.path.insert(0, {ROOT!r})
import pyengine
import pyengine.kernels.ln_linear as k
import pyengine.ops.ln_linear
assert k.__file__.startswith({os.path.join(ROOT, "kernels")!r}), k.__file__
print("ok", k.__file__)
"""


def test_kernels_import_from_a_plain_source_checkout():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd="/")
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]


def test_without_the_finder_the_checkout_would_not_import_kernels():
    """The check above is meaningful: with pyengine's own finder removed as well, the import fails."""
    script = SCRIPT.replace("import pyengine\n", "import pyengine\nsys.meta_path[:] = [f for f in sys.meta_path "
                            "if type(f).__name__ != '_SourceTreeKernels']\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode != 0 and "No module named 'pyengine.kernels'" in res.stderr, res.stderr[-2000:]
