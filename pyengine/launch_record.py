"""Record the Triton kernel launches of a model forward, and the exact compile variant each one gets on an H100.

A real launch ``kernel[grid](*args)`` on a GPU specialises the kernel on its arguments: pointers (and integers)
divisible by 16 get ``tt.divisibility = 16``, integers equal to 1 become constexprs, the dtypes and constexprs
the launcher picked go into the signature. :func:`record` captures every launch under the Triton interpreter (on
CPU, no GPU needed) and derives that variant with Triton's own code, as the JIT would on a GPU:
``triton.runtime.jit.create_function_from_signature`` (the binder, with the CUDA backend's
``native_specialize_impl``) and ``JITFunction._pack_args`` (signature, constexprs, attributes, options).

What differs from a GPU run, and how it is made the GPU truth:

* Pointer alignment: a CPU tensor's ``data_ptr`` is not the GPU's. On CUDA every allocation of the caching
  allocator starts at a multiple of 512 B, so a tensor's address mod 16 is its ``storage_offset() *
  element_size()`` mod 16: the recorder passes Triton an object whose ``data_ptr`` is exactly that (a view at an
  element offset, e.g. a column slice of a ``[M, 3C]`` buffer, is then correctly *not* 16-aligned).
* Launcher choices: the kernel modules pick other configurations under the interpreter (``INTERPRETING``: whole
  samples per program, fp32 dots instead of TF32, bf16 upcasts). ``gpu_configs=True`` sets each kernel module's
  ``INTERPRETING`` to False while recording, so the launchers pick what they pick on CUDA (the device check in
  ``kernels/_common.py`` keeps accepting CPU tensors).
* Dry run: with ``execute=False`` the kernels are not run (which is what makes full-size, throughput-batch
  forwards take seconds instead of hours under the interpreter). No launch argument depends on tensor *values*
  except through the DPC-kNN selection, whose output indices feed the gather; a dry run fills them with a valid
  ascending selection (``0 .. keep-1``), which has the same shapes and strides. ``tests/kernels/test_launch_record.py``
  checks that a dry forward records exactly the launches of an executed one.

Recorded variants live in ``pyengine/data/launch_variants.json``; regenerate it (after changing a launcher, a
kernel's parameters or a fused model) with::

    python -m pyengine.launch_record --write

and ``python -m pyengine.compile_check`` compiles each of them for sm_90 (``tests/test_compile_sm90.py``).
"""
import contextlib
import hashlib
import inspect
import json
import os
import sys
from typing import Dict, List

VARIANTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "launch_variants.json")
FORMAT = 1

# The headline models (pyengine.bench.CASES names), each at a latency batch and the benchmark's throughput batch
# (pyengine.bench.THROUGHPUT_BATCH["full"]: 256 windows for the MHFormers, 32 for the MixSTEs), in fp32, TF32 and
# bf16: what benchmarks/gpu_suite.sh runs and what a user on a GPU would.
MODEL_CASES = ("mhformer-351", "tpc_mhformer-351", "mixste-243", "hot_mixste-243")
PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "bf16": ("bfloat16", False)}
LATENCY_BATCH = 2
# The CUDA caching allocator rounds every block to 512 B: a fresh tensor's address is 512-aligned.
CUDA_ALLOCATION_ALIGN = 512


class _DevicePointer:
    """What Triton's specialisation reads of a tensor argument (``dtype``, ``data_ptr``), with the address the
    tensor would have on CUDA modulo the allocator alignment: its byte offset inside its storage."""

    def __init__(self, t):
        self.dtype = t.dtype
        self._ptr = CUDA_ALLOCATION_ALIGN + t.storage_offset() * t.element_size()

    def data_ptr(self):
        return self._ptr


def _cuda_backend():
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    return CUDABackend(GPUTarget("cuda", 90, 32))


_JIT = {}


def _jit_function(fn):
    """A ``JITFunction`` of the kernel's Python function (under the interpreter ``@triton.jit`` gives an
    ``InterpretedFunction``; the JIT's parameter table, binder and ``_pack_args`` need the real thing)."""
    from triton.runtime.jit import JITFunction, create_function_from_signature
    if fn not in _JIT:
        jf = JITFunction(fn)
        _JIT[fn] = (jf, create_function_from_signature(jf.signature, jf.params, _backend()))
    return _JIT[fn]


_BACKEND = []


def _backend():
    if not _BACKEND:
        _BACKEND.append(_cuda_backend())
    return _BACKEND[0]


def kernel_name(fn) -> str:
    """``module:function`` of a kernel's Python function (``pyengine.kernels.ln_linear:_ln_linear_kernel``)."""
    return f"{fn.__module__}:{fn.__qualname__}"


def encode_value(v):
    """A constexpr / scalar as JSON: ``tl.dtype`` as ``{"tl.dtype": "fp32"}``, the rest as is."""
    import triton.language as tl
    if isinstance(v, tl.dtype):
        return {"tl.dtype": v.name}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot record a launch argument of type {type(v).__name__}: {v!r}")


def decode_value(v):
    import triton.language as tl
    if isinstance(v, dict) and "tl.dtype" in v:
        return tl.dtype(v["tl.dtype"])
    return v


def variant_of(fn, args, kwargs) -> Dict:
    """The compile variant Triton's JIT derives on an sm_90 GPU for ``fn[grid](*args, **kwargs)``:
    ``{"kernel", "signature", "constexprs", "attrs", "options"}`` with names as keys (JSON-ready)."""
    import torch
    jf, binder = _jit_function(fn)
    backend = _backend()
    dev_args = [_DevicePointer(a) if isinstance(a, torch.Tensor) else a for a in args]
    dev_kwargs = {k: _DevicePointer(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    dev_kwargs.setdefault("debug", False)  # as JITFunction.run (knobs.runtime.debug is off)
    bound, specialization, _ = binder(*dev_args, **dev_kwargs)
    options, signature, constexprs, attrs = jf._pack_args(backend, dev_kwargs, bound, specialization, None)
    names = [p.name for p in jf.params]
    for path in list(constexprs) + list(attrs):
        if len(path) != 1:
            raise NotImplementedError(f"{kernel_name(fn)}: tuple kernel arguments are not supported ({path})")
    defaults = backend.parse_options({})
    # The launch options that differ from the backend's defaults (num_warps, num_stages, enable_fp_fusion ...).
    opts = {k: v for k, v in options.__dict__.items()
            if k in ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg", "launch_pdl")
            and v != getattr(defaults, k)}
    opts.setdefault("num_warps", options.num_warps)
    opts.setdefault("num_stages", options.num_stages)
    return {"kernel": kernel_name(fn), "signature": signature,
            "constexprs": {names[p[0]]: encode_value(v) for p, v in sorted(constexprs.items())},
            "attrs": {names[p[0]]: v for p, v in sorted(attrs.items()) if v},
            "options": opts}


def describe_arg(v):
    """A launch argument for the performance model: a tensor as ``"bf16[2,351,512]"``, a scalar as is."""
    import torch
    from pyengine.kernels._common import SIG
    if isinstance(v, torch.Tensor):
        return f"{SIG.get(v.dtype, str(v.dtype).replace('torch.', ''))}[{','.join(map(str, v.shape))}]"
    return encode_value(v)


def variant_key(variant) -> str:
    return json.dumps(variant, sort_keys=True)


# Dry-run stand-ins for kernels whose output values steer later host code (see the module docstring).
def _dry_tpc_select(bound):
    out = bound["out_ptr"]
    out.copy_(_arange_like(out))


def _arange_like(out):
    import torch
    return torch.arange(out.shape[-1], dtype=out.dtype, device=out.device).expand_as(out)


DRY_OUTPUTS = {"_tpc_select_kernel": _dry_tpc_select}


class Recording:
    """The launches seen inside :func:`record`: ``launches`` is a list of ``{"variant", "grid", "args"}``."""

    def __init__(self):
        self.launches: List[Dict] = []

    def variants(self):
        """The distinct compile variants, in first-launch order."""
        seen = {}
        for launch in self.launches:
            seen.setdefault(variant_key(launch["variant"]), launch["variant"])
        return list(seen.values())


def _kernel_modules_with_flag():
    from pyengine.kernels import kernel_modules
    return [m for m in kernel_modules() if hasattr(m, "INTERPRETING")]


@contextlib.contextmanager
def record(execute=False, gpu_configs=True):
    """Capture every Triton launch inside the block (needs ``TRITON_INTERPRET=1``: the kernels must be the
    interpreter's). ``execute``: also run the kernels (else a dry run, see the module docstring);
    ``gpu_configs``: make the launchers pick their CUDA configurations. Yields a :class:`Recording`."""
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("launch_record.record needs TRITON_INTERPRET=1 (set before importing triton)")
    if execute and gpu_configs:
        raise ValueError("execute=True with gpu_configs=True: the interpreter cannot run the CUDA configurations "
                         "(TF32 dots, register-sized tiles); record CUDA configurations dry (execute=False)")
    rec = Recording()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        variant = variant_of(self.fn, args, kwargs)
        _, binder = _jit_function(self.fn)
        bound, _, _ = binder(*args, **kwargs)  # every parameter by name (defaults applied), the real tensors
        g = grid(bound) if callable(grid) else grid
        g = tuple(int(x) for x in (tuple(g) + (1, 1))[:3])
        rec.launches.append({"variant": variant, "grid": list(g),
                             "args": {name: describe_arg(value) for name, value in bound.items()}})
        if execute:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        if self.fn.__name__ in DRY_OUTPUTS:
            DRY_OUTPUTS[self.fn.__name__](bound)
        return None

    patched = []
    if gpu_configs:
        for module in _kernel_modules_with_flag():
            patched.append((module, module.INTERPRETING))
            module.INTERPRETING = False
    InterpretedFunction.run = run
    try:
        yield rec
    finally:
        InterpretedFunction.run = original
        for module, value in patched:
            module.INTERPRETING = value


def build_engine(case, dtype_name, allow_tf32, size="full"):
    """``(engine, model)``: the bench case's model (random weights, pyengine.bench.build_model) loaded on CPU
    with ``backend="triton"`` at the dtype."""
    import torch

    from pyengine import bench as pb
    from pyengine.load import load
    arch, config = pb.case_config(case, size)
    model = pb.build_model(arch, config)
    engine = load(model, backend="triton", dtype=getattr(torch, dtype_name), device="cpu",
                           allow_tf32=allow_tf32)
    return engine, model


def record_forward(case, precision, batch, size="full", execute=False, gpu_configs=True):
    """The launches of ONE forward of a bench case (``"mhformer-351"``) at ``precision`` (fp32 / tf32 / bf16)
    and ``batch`` windows. A list of ``{"variant", "grid", "args"}``."""
    import torch

    from pyengine import bench as pb
    dtype_name, tf32 = PRECISIONS[precision]
    engine, model = build_engine(case, dtype_name, tf32, size)
    x = pb.make_inputs(model, batch, getattr(torch, dtype_name), "cpu", copies=1)[0]
    with torch.no_grad(), record(execute=execute, gpu_configs=gpu_configs) as rec:
        engine(x)
    return rec.launches


def forward_label(case, precision, batch):
    return f"{case}/{precision}/b{batch}"


def headline_forwards():
    """``[(case, precision, batch)]`` of every recorded forward."""
    from pyengine import bench as pb
    out = []
    for case in MODEL_CASES:
        arch = pb.CASES[case][0]
        for precision in PRECISIONS:
            for batch in (LATENCY_BATCH, pb.THROUGHPUT_BATCH["full"][arch]):
                out.append((case, precision, batch))
    return out


def compress(launches, variant_index):
    """Consecutive-or-not identical launches merged with a count: ``[{"v": index, "grid", "args", "count"}]``
    (in first-launch order)."""
    merged = {}
    for launch in launches:
        key = (variant_index[variant_key(launch["variant"])], json.dumps(launch["grid"]),
               json.dumps(launch["args"], sort_keys=True))
        if key in merged:
            merged[key]["count"] += 1
        else:
            merged[key] = {"v": key[0], "grid": launch["grid"], "args": launch["args"], "count": 1}
    return list(merged.values())


def build_file(forwards=None, log=None):
    """The content of ``launch_variants.json``: the deduplicated ``variants`` (each with the forwards that use
    it) and, per forward, its launches (``"v"`` indexes ``variants``) for the performance model."""
    forwards = forwards or headline_forwards()
    variants, index, per_forward = [], {}, {}
    for case, precision, batch in forwards:
        label = forward_label(case, precision, batch)
        if log:
            log(f"recording {label}")
        launches = record_forward(case, precision, batch)
        for launch in launches:
            key = variant_key(launch["variant"])
            if key not in index:
                index[key] = len(variants)
                variants.append({**launch["variant"], "used_by": []})
            if label not in variants[index[key]]["used_by"]:
                variants[index[key]]["used_by"].append(label)
        per_forward[label] = compress(launches, index)
    return {"format": FORMAT, "generated_by": "python -m pyengine.launch_record --write",
            "target": "cuda sm_90 (GPUTarget('cuda', 90, 32)), pointers aligned as on the CUDA caching allocator",
            "kernel_params": kernel_params(), "variants": variants, "forwards": per_forward}


def kernel_params():
    """``{kernel: sha256 of its parameter list}`` of every Triton kernel in pyengine.kernels: a recorded
    variant is stale once its kernel's parameters change."""
    from pyengine.kernels import kernel_modules
    out = {}
    for module in kernel_modules():
        for value in vars(module).values():
            fn = getattr(value, "fn", None)
            if type(value).__name__ in ("JITFunction", "InterpretedFunction") and fn.__module__ == module.__name__:
                params = str(inspect.signature(fn))
                out[kernel_name(fn)] = hashlib.sha256(params.encode()).hexdigest()[:16]
    return dict(sorted(out.items()))


def write_file(data, path=VARIANTS_PATH):
    """One variant / launch per line: diffs stay readable."""
    lines = ["{", f' "format": {data["format"]},', f' "generated_by": {json.dumps(data["generated_by"])},',
             f' "target": {json.dumps(data["target"])},',
             f' "kernel_params": {json.dumps(data["kernel_params"], sort_keys=True)},', ' "variants": [']
    lines += [f"  {json.dumps(v, sort_keys=True)}," for v in data["variants"]]
    lines[-1] = lines[-1].rstrip(",")
    lines += [" ],", ' "forwards": {']
    labels = list(data["forwards"])
    for i, label in enumerate(labels):
        lines.append(f"  {json.dumps(label)}: [")
        rows = [f"   {json.dumps(launch, sort_keys=True)}," for launch in data["forwards"][label]]
        rows[-1] = rows[-1].rstrip(",")
        lines += rows
        lines.append("  ]" + ("," if i < len(labels) - 1 else ""))
    lines += [" }", "}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def load_file(path=VARIANTS_PATH):
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: expected format {FORMAT}, got {data.get('format')!r}; regenerate with "
                         "`python -m pyengine.launch_record --write`")
    return data


def main(argv=None):
    """``python -m pyengine.launch_record [--write] [--out PATH]``: record the headline forwards (dry, CUDA
    configurations) and print a summary, or write the variants file."""
    import argparse
    parser = argparse.ArgumentParser(description="record the Triton launch variants of the headline models")
    parser.add_argument("--write", action="store_true", help=f"write {os.path.relpath(VARIANTS_PATH)}")
    parser.add_argument("--out", default=VARIANTS_PATH, help="where --write writes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        # triton reads TRITON_INTERPRET on import: re-run this command with it set
        os.execve(sys.executable, [sys.executable, "-m", "pyengine.launch_record", *(argv or sys.argv[1:])],
                  {**os.environ, "TRITON_INTERPRET": "1"})
    data = build_file(log=lambda m: print(m, file=sys.stderr, flush=True))
    n = sum(sum(launch["count"] for launch in f) for f in data["forwards"].values())
    print(f"{len(data['forwards'])} forwards, {n} launches, {len(data['variants'])} distinct variants")
    if args.write:
        write_file(data, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
