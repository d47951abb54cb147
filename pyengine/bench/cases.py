"""The model cases of the benchmarks (docs/benchmarks.md): which models at which sizes and batches, the row
catalogue (compile modes, pyengine backends, the CPU anchor rows), and the deterministic models and inputs."""
import os

import torch

from ..arch import SPECS as _SPECS
from ..backends import BACKENDS

# ---------------------------------------------------------------------------------------------------------------
# Model cases. "full" = the published sizes (used on CUDA); "small" = a reduced width/depth with the same frame
# counts where affordable (used on CPU and whenever benchmarks are disabled, i.e. CI). PYENGINE_BENCH_SIZE
# overrides the choice.
# ---------------------------------------------------------------------------------------------------------------
_SMALL_MHF = dict(channel=64, d_hid=128)
_SMALL_MIX = dict(frames=81, channel=32, depth=2)
_SMALL_MB = dict(maxlen=81, dim_feat=32, dim_rep=32, depth=2)  # MotionBERT: same frames as the small MixSTE
CASES = {  # name -> (arch, full config, small config); listed in priority order (a time budget cuts the tail)
    "mhformer-351": ("mhformer", dict(frames=351), dict(frames=351, **_SMALL_MHF)),
    "tpc_mhformer-351": ("tpc_mhformer", dict(frames=351, token_num=117, layer_index=1),
                         dict(frames=81, token_num=27, layer_index=1, **_SMALL_MHF)),
    "mixste-243": ("mixste", dict(frames=243), dict(_SMALL_MIX)),
    "hot_mixste-243": ("hot_mixste", dict(frames=243, token_num=81, layer_index=3),
                       dict(token_num=27, layer_index=1, **_SMALL_MIX)),
    "motionbert-243": ("motionbert", dict(dim_feat=512, mlp_ratio=2, maxlen=243), dict(mlp_ratio=2, **_SMALL_MB)),
    "motionbert_lite-243": ("motionbert", dict(dim_feat=256, mlp_ratio=4, maxlen=243),
                            dict(mlp_ratio=4, **_SMALL_MB)),
    "hot_motionbert-243": ("hot_motionbert", dict(maxlen=243, token_num=81, layer_index=1),
                           dict(mlp_ratio=4, token_num=27, layer_index=1, **_SMALL_MB)),
    "mhformer-243": ("mhformer", dict(frames=243), dict(frames=243, **_SMALL_MHF)),
    "mhformer-81": ("mhformer", dict(frames=81), dict(frames=81, **_SMALL_MHF)),
    "mhformer-27": ("mhformer", dict(frames=27), dict(frames=27, **_SMALL_MHF)),
}
# `pyengine bench --arch A` starts from this case's config (then applies the user's overrides).
ARCH_DEFAULT_CASE = {"mhformer": "mhformer-351", "tpc_mhformer": "tpc_mhformer-351", "mixste": "mixste-243",
                     "hot_mixste": "hot_mixste-243", "tpc_mixste": None, "motionbert": "motionbert-243",
                     "hot_motionbert": "hot_motionbert-243"}
_TPC_MIXSTE = (dict(frames=243, token_num=61, layer_index=7), dict(token_num=27, layer_index=1, **_SMALL_MIX))
SEQ2FRAME = tuple(n for n, s in _SPECS.items() if s.io == "seq2frame")  # one output frame per window at evaluation
# Windows per call: latency (1 and 2 windows) and throughput (a large batch; smaller at the small sizes).
LATENCY_BATCHES = (1, 2)
THROUGHPUT_BATCH = {"full": {"mhformer": 256, "tpc_mhformer": 256, "mixste": 32, "hot_mixste": 32,
                             "tpc_mixste": 32, "motionbert": 32, "hot_motionbert": 32},
                    "small": {"mhformer": 8, "tpc_mhformer": 8, "mixste": 8, "hot_mixste": 8, "tpc_mixste": 8,
                              "motionbert": 8, "hot_motionbert": 8}}
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
# "auto" last: the default a user gets (on CPU its GEMM is measured per dtype: dispatch.cpu_gemm_choice)
PYENGINE_BACKENDS = tuple(b for b in BACKENDS if b != "auto") + ("auto",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# The CPU anchor rows (issue 19): what a CPU deployment would otherwise use, beside eager / compile / pyengine.
# The dtype is the row's compute precision; their inputs and outputs are fp32 either way (bench/anchors.py).
ANCHOR_ROWS = (("openvino", "fp32", torch.float32), ("openvino", "bf16", torch.bfloat16),
               ("onnxruntime", "fp32", torch.float32))
ANCHOR_IMPLS = tuple(dict.fromkeys(impl for impl, _, _ in ANCHOR_ROWS))


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device):
    """The chosen precision: bf16 on CUDA (tensor cores), fp32 on CPU (no fast bf16 path there); the environment
    variable PYENGINE_BENCH_DTYPE (float32 / bfloat16 / float16) wins (CI collects the GPU's rows with it)."""
    forced = os.environ.get("PYENGINE_BENCH_DTYPE")
    if forced:
        if forced not in DTYPES:
            raise ValueError(f"PYENGINE_BENCH_DTYPE: expected one of {sorted(DTYPES)}, got {forced!r}")
        return DTYPES[forced]
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def size_tier(device, benchmark_disabled=False):
    """``full`` on CUDA with timing on, else ``small``; the environment variable PYENGINE_BENCH_SIZE wins."""
    forced = os.environ.get("PYENGINE_BENCH_SIZE")
    if forced:
        if forced not in ("full", "small"):
            raise ValueError(f"PYENGINE_BENCH_SIZE: expected 'full' or 'small', got {forced!r}")
        return forced
    return "full" if str(device).startswith("cuda") and not benchmark_disabled else "small"


def case_config(case, size):
    arch, full, small = CASES[case]
    return arch, dict(full if size == "full" else small)


def batches(arch, size):
    return (*LATENCY_BATCHES, THROUGHPUT_BATCH[size][arch])


def regime(batch):
    return "latency" if batch in LATENCY_BATCHES else "throughput"


_MODELS = {}


def model_class(arch):
    """The eager reference class of ``arch``: ``pyengine.arch.MODELS``, plus MotionBERT / HoT-MotionBERT
    (pyengine.models.motionbert) until the loader registers them there."""
    from ..arch import MODELS
    from ..models import HoTMotionBERT, MotionBERT

    return {"motionbert": MotionBERT, "hot_motionbert": HoTMotionBERT, **MODELS}[arch]


def input_shape(model, batch):
    """``[batch, frames, joints, channels]``: 2 channels (x, y), 3 for MotionBERT (``dim_in``: + confidence)."""
    return (batch, model.frames, model.n_joints, getattr(model, "dim_in", 2))


def build_model(arch, config, seed=0):
    """The eager fp32 reference model on CPU with deterministic random weights (cached per config)."""
    from ..testing import randomize_

    key = (arch, tuple(sorted(config.items())), seed)
    if key not in _MODELS:
        _MODELS[key] = randomize_(model_class(arch)(**config), seed=seed).eval()
    return _MODELS[key]


def make_inputs(model, batch, dtype, device, copies=8, seed=0):
    """``copies`` distinct input batches (rotated between calls so no call reuses the previous one's input)."""
    gen = torch.Generator().manual_seed(seed)
    shape = input_shape(model, batch)
    return [(0.3 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype) for _ in range(copies)]
