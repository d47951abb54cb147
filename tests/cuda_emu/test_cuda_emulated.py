"""The CUDA kernels of csrc/*.cu executed on the CPU by the CUDA emulator (tools/cuda_emu, docs/kernels.md).

Each .cu file is rewritten mechanically (launch syntax, __shared__) and built with g++ -std=c++20 against
tools/cuda_emu/cuda_emu.h: one OS thread per CUDA thread, real barriers, per-warp shuffles. The results are held to
the C++ implementations bit for bit where the arithmetic is shared (TPC selection: identical indices, ties
included) and to the fp64 reference within the documented tolerance (SUSA: 2x the same-precision eager error).
A ThreadSanitizer build and an AddressSanitizer + UBSan build run a few small shapes and fail on any report.
`pytest -k emulated` selects these tests; the first one builds the library (cached by source hash)."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from pyengine import _C
from pyengine.models.tpc import dpc_knn_select
from pyengine.ops.susa import prepare_params
from pyengine.testing import assert_close, rel_error, separated_features
from test_susa_ops import module_and_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/cuda_emu/ -> repo
sys.path.insert(0, os.path.join(ROOT, "tools", "cuda_emu"))
import emu  # noqa: E402

_OK, _WHY = emu.cxx20_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"{emu.CXX} lacks C++20, which the CUDA emulator needs: {_WHY}")


@pytest.fixture(scope="module")
def cuda_emu():
    return emu.Emulated(emu.build("plain"))


# ---- TPC selection: identical indices to the C++ kernel ------------------------------------------------------

def tied_features(B, F, C, seed):
    """Random features with exact ties: frame 1 repeats frame 0, the last frame repeats the middle one."""
    x = torch.randn(B, F, C, generator=torch.Generator().manual_seed(seed))
    if F >= 3:
        x[:, 1] = x[:, 0]
        x[:, -1] = x[:, F // 2]
    return x


def assert_valid_selection(idx, B, F, keep, center):
    assert idx.shape == (B, keep) and idx.dtype == torch.int64
    assert ((idx >= 0) & (idx < F)).all(), idx
    assert (idx[:, 1:] > idx[:, :-1]).all(), f"not distinct and ascending: {idx}"
    if center is not None:
        assert (idx == center).any(dim=1).all(), f"centre {center} missing: {idx}"


# (B, F, C, keep, center, k, index_ties, noise, scratch_batch): F in {27, 81, 243, 351}, an even F, F = 1 and 1000,
# keep in {1, F // 3, F - 1}, with and without centre, C with and without a tail below 16 channels
TPC_CASES = [
    (2, 27, 32, 1, None, 2, True, False, None),
    (2, 27, 32, 9, None, 2, True, False, None),
    (2, 27, 32, 26, 13, 2, True, False, None),
    (2, 27, 20, 9, 13, 3, False, False, 1),
    (3, 50, 7, 16, 25, 2, True, True, 2),
    (1, 1, 5, 1, None, 1, True, False, None),
    (1, 1, 5, 1, 0, 1, True, False, None),
    (2, 81, 40, 1, 40, 2, True, False, None),
    (2, 81, 40, 27, None, 2, True, True, None),
    (2, 81, 40, 80, None, 2, False, False, None),
    (2, 81, 150, 27, 40, 2, True, False, None),  # three 64-channel chunks through shared memory, and a tail
    (1, 243, 24, 81, 121, 2, True, False, None),
    (1, 243, 24, 242, None, 2, True, False, None),
    (1, 351, 17, 117, 175, 2, True, False, None),
    (1, 351, 17, 1, None, 2, True, False, None),
    (1, 1000, 16, 333, None, 2, True, False, None),
]


@pytest.mark.parametrize("B,F,C,keep,center,k,index_ties,noise,scratch_batch", TPC_CASES)
def test_emulated_tpc_select_matches_cpp(cuda_emu, B, F, C, keep, center, k, index_ties, noise, scratch_batch):
    x = tied_features(B, F, C, seed=F + keep)
    nz = torch.rand(B, F, generator=torch.Generator().manual_seed(1)) * 1e-6 if noise else None
    c = -1 if center is None else center
    got = cuda_emu.tpc_select(x, keep, k, c, index_ties, nz, scratch_batch=scratch_batch)
    want = _C.tpc_select_cpu(x, keep, k, c, index_ties, nz)
    assert torch.equal(got, want), f"emulated CUDA {got.tolist()} != C++ {want.tolist()}"
    assert_valid_selection(got, B, F, keep, center)


@pytest.mark.parametrize("tie_break", ["index", "strict"])
def test_emulated_tpc_select_ties(cuda_emu, tie_break):
    ties = tie_break == "index"
    base = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(4))
    inputs = [torch.ones(2, 27, 8),                               # constant: every distance 0
              base.repeat_interleave(2, dim=1),                   # every frame twice
              torch.tensor([[[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]]]).repeat(2, 1, 1)]  # mutual pairs
    for x in inputs:
        F = x.shape[1]
        for keep, center in [(F // 3, None), (F // 3, F // 2), (1, F // 2), (F - 1, None)]:
            c = -1 if center is None else center
            got = cuda_emu.tpc_select(x, keep, 2, c, ties)
            assert torch.equal(got, _C.tpc_select_cpu(x, keep, 2, c, ties))
            assert torch.equal(got, dpc_knn_select(x, keep, center=center, tie_break=tie_break))


def test_emulated_tpc_select_matches_reference(cuda_emu):
    for keep, center in [(27, None), (27, 40)]:
        x = separated_features(2, 81, 24, keep, seed=81 + keep)
        got = cuda_emu.tpc_select(x, keep, 2, -1 if center is None else center, True)
        assert torch.equal(got, dpc_knn_select(x, keep, center=center))


def test_emulated_tpc_select_chunked_scratch(cuda_emu):
    """The launcher runs the batch in chunks that share one scratch (as the glue does for a big batch)."""
    x = tied_features(5, 40, 24, seed=3)
    want = _C.tpc_select_cpu(x, 13, 2, 7, True)
    for scratch_batch in (1, 2, 5):
        assert torch.equal(cuda_emu.tpc_select(x, 13, 2, 7, True, scratch_batch=scratch_batch), want)


def nonfinite_inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 20, 12, generator=gen)
    one = x.clone()
    one[0, 3, 5] = float("nan")   # NaN in one frame of sample 0
    one[1, 0] = float("nan")       # a whole NaN frame (the first) in sample 1
    every = x.clone()
    every[:, :, 2] = float("nan")  # NaN in every frame
    inf = x.clone()
    inf[0, 4, 0] = float("inf")
    inf[0, 9, 0] = float("inf")    # two +inf tokens: inf - inf = NaN between them
    inf[1, 6, 1] = float("-inf")
    return {"nan_one_frame": one, "nan_all_frames": every, "inf": inf}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on NaN
@pytest.mark.parametrize("case", ["nan_one_frame", "nan_all_frames", "inf"])
@pytest.mark.parametrize("center", [None, 0, 9])
def test_emulated_tpc_select_nonfinite_features(cuda_emu, case, center):
    """NaN / Inf features: a NaN distance counts as +inf, a NaN score as -inf, ties go to the lower index; cpp,
    Triton (interpreter), emulated CUDA and the reference return the same valid indices."""
    from pyengine.kernels.tpc_select import tpc_select_triton
    x = nonfinite_inputs()[case]
    B, F, _ = x.shape
    c = -1 if center is None else center
    for keep, k in [(6, 2), (1, 2), (F - 1, 1)]:
        want = dpc_knn_select(x, keep, k=k, center=center)
        assert_valid_selection(want, B, F, keep, center)
        for name, got in [("cpp", _C.tpc_select_cpu(x, keep, k, c, True)),
                          ("triton", tpc_select_triton(x, keep, k, c, True, None)),
                          ("emulated cuda", cuda_emu.tpc_select(x, keep, k, c, True))]:
            assert torch.equal(got, want), f"{name} {got.tolist()} != reference {want.tolist()} (keep={keep}, k={k})"
    if case == "nan_all_frames":  # every score is NaN: the lowest indices win (the centre always kept)
        others = [i for i in range(F) if i != center][:5 if center is not None else 6]
        want = sorted(others + ([center] if center is not None else []))
        assert dpc_knn_select(x, 6, center=center).tolist() == [want] * B


# ---- SUSA: the fp64 reference within the documented tolerance -------------------------------------------------

# (dtype, direction, LN, (N, C, H, W)): every mode in every dtype at one shape, then odd sizes (C > 32 output
# channels over several warps, a softmax axis S > 32 over several lanes per thread) in a few modes each
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SUSA_CASES = [(dt, d, ln, (2, 10, 8, 6)) for dt in (F32, F16, BF16) for d in ("h", "w") for ln in (True, False)] + [
    (F32, "h", True, (1, 33, 7, 5)), (BF16, "w", False, (1, 33, 7, 5)), (F16, "h", True, (1, 33, 7, 5)),
    (F32, "w", True, (2, 5, 9, 40)), (F16, "h", False, (2, 5, 9, 40)), (BF16, "h", True, (2, 5, 9, 40))]


def reference_and_eager_error(m, x):
    """The fp64 evaluation of module m (same rounded parameters) and the same-precision eager error: the
    documented tolerance is ``pyengine.testing.assert_close``'s 2x that error, with the floors of ``FLOOR``."""
    want = copy.deepcopy(m).double()(x.double())
    return want, rel_error(m(x), want)


def run_susa(cuda_emu, x, params, h_wise, c_out=None, out_index=None):
    N, C, H, W = x.shape
    c_out = c_out or C
    out = torch.full((N, c_out, H, W), float("nan"), dtype=x.dtype)
    if out_index is None:
        out_index = torch.arange(C, dtype=torch.int32)
    return cuda_emu.susa(x, params, h_wise, out, out_index)


@pytest.mark.parametrize("dtype,direction,ln,shape", SUSA_CASES)
def test_emulated_susa_matches_reference(cuda_emu, dtype, direction, ln, shape):
    N, C, H, W = shape
    m, raw = module_and_params(direction, C, ln, dtype, seed=C)
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(C + 1)).to(dtype)
    want, eager_err = reference_and_eager_error(m, x)
    params = prepare_params(C, *raw)
    got = run_susa(cuda_emu, x, params, direction == "h")
    assert_close("emulated CUDA", got, want, eager_err)
    cpp = torch.empty_like(x)
    _C.susa_cpu(x, *params, direction == "h", cpp, torch.arange(C, dtype=torch.int32))
    assert_close("emulated CUDA vs C++", got, cpp, eager_err)


@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
def test_emulated_susa_strided_input_and_shuffled_output(cuda_emu, layout):
    N, C, H, W = 2, 12, 7, 9
    m, raw = module_and_params("w", C, True, torch.float32, seed=3)
    full = torch.randn(N, 2 * C, H, W, generator=torch.Generator().manual_seed(5))
    x = full.contiguous(memory_format=torch.channels_last)[:, :C] if layout == "channels_last" else full[:, C:]
    params = prepare_params(C, *raw)
    index = torch.randperm(2 * C, generator=torch.Generator().manual_seed(2))[:C].to(torch.int32)
    got = run_susa(cuda_emu, x, params, False, c_out=2 * C, out_index=index)
    want, eager_err = reference_and_eager_error(m, x)
    written = torch.zeros(2 * C, dtype=torch.bool)
    written[index.long()] = True
    assert torch.isnan(got[:, ~written]).all(), "channels outside out_index were written"
    assert_close("emulated CUDA, shuffled", got[:, index.long()], want, eager_err)


def test_emulated_susa_out_of_range_out_index_is_skipped(cuda_emu):
    """The device-side bound: an out_index element outside [0, C_out) is skipped, nothing out of bounds."""
    N, C, H, W = 2, 6, 5, 4
    m, raw = module_and_params("h", C, False, torch.float32, seed=1)
    x = torch.randn(N, C, H, W)
    params = prepare_params(C, *raw)
    buf = torch.full((3 * N * C * H * W,), float("nan"))  # out in the middle, guard regions around it
    out = buf[N * C * H * W:2 * N * C * H * W].view(N, C, H, W)
    index = torch.tensor([0, -1, 2, C, 4, 1 << 20], dtype=torch.int32)
    cuda_emu.susa(x, params, True, out, index)
    assert torch.isnan(buf[:N * C * H * W]).all() and torch.isnan(buf[2 * N * C * H * W:]).all()
    assert out[:, [1, 3, 5]].isnan().all(), "channels whose index was skipped were written"
    want, eager_err = reference_and_eager_error(m, x)
    valid = [0, 2, 4]  # out_index[c] == c there
    assert_close("emulated CUDA, valid channels", out[:, valid], want[:, valid], eager_err)


def test_emulated_susa_shared_memory_limit(cuda_emu):
    """A plane over the opt-in shared-memory limit fails the launch, as on the GPU (the glue checks first)."""
    N, C, H, W = 1, 2, 241, 241
    _, raw = module_and_params("h", C, False, torch.float32)
    gw = torch.ones(H)
    params = prepare_params(C, gw, *raw[1:])
    with pytest.raises(emu.KernelError, match="227 KiB"):
        run_susa(cuda_emu, torch.randn(N, C, H, W), params, True)


# ---- the emulator itself ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("which,message", [
    (0, r"deadlock: .*64 thread\(s\) wait in __syncthreads at .*selftest.cu:\d+; 64 thread\(s\) have exited"),
    (1, r"__syncthreads at .*selftest.cu:\d+ while other threads of the block wait at the __syncthreads at"),
    (2, r"deadlock: .*32 thread\(s\) wait in __shfl_xor_sync at .*selftest.cu:\d+; 32 thread\(s\) have exited"),
    (4, r"block \(1025, 1, 1\) exceeds 1024 threads"),
    (5, r"dynamic shared memory 50176 B > 49152 B"),
    (7, r"a zero grid or block dimension"),
])
def test_emulated_runtime_reports_misuse(cuda_emu, which, message):
    with pytest.raises(emu.KernelError, match=message):
        cuda_emu.selftest(which)


def test_emulated_runtime_shuffles_and_shared_memory(cuda_emu):
    out = cuda_emu.selftest(3)  # xor butterfly sum, shfl_down, shfl broadcast, a __shared__ array and a barrier
    t = torch.arange(64, dtype=torch.float64)
    warp_sum = torch.tensor([sum(range(32)), sum(range(32, 64))], dtype=torch.float64).repeat_interleave(32)
    down = torch.where(t % 32 == 31, t, t + 1)
    bcast = (t // 32) * 32 + 3
    assert torch.equal(out[:64].double(), (warp_sum + 1000 * down + 1e6 * bcast).float().double())
    out = cuda_emu.selftest(6)  # 49 KiB of dynamic shared memory after the opt-in attribute
    assert out[:2].tolist() == [49 * 256 - 1, 49 * 256]


def test_emulated_half_and_bfloat16_conversions_match_torch(cuda_emu):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    want = bits.view(torch.float16).float()
    got = cuda_emu.half_bits_to_float(bits)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got[~got.isnan()], want[~want.isnan()])
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100000, generator=gen) * 10.0 ** torch.randint(-9, 6, (100000,), generator=gen),
                   want[~want.isnan()],  # every half exactly, and the midpoints between neighbours (ties)
                   (want[~want.isnan()].sort().values[1:] + want[~want.isnan()].sort().values[:-1]) / 2,
                   torch.tensor([65504.0, 65519.99, 65520.0, 1e10, -1e10, 2 ** -25, 2 ** -24, 2 ** -26, 0.0, -0.0])])
    x = x[x.isfinite()]
    assert torch.equal(cuda_emu.float_to_half_bits(x), x.half().view(torch.int16))
    assert torch.equal(cuda_emu.float_to_bf16_bits(x), x.bfloat16().view(torch.int16))
    nan = torch.tensor([float("nan")])
    assert cuda_emu.float_to_half_bits(nan).item() == 0x7fff and cuda_emu.float_to_bf16_bits(nan).item() == 0x7fff


# ---- sanitizers ------------------------------------------------------------------------------------------------

SANITIZER_REPORTS = ("WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def run_sanitized(variant):
    exe = emu.build(variant)
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66 second_deadlock_stack=1",
           "ASAN_OPTIONS": "halt_on_error=1 detect_leaks=1 exitcode=66",
           "UBSAN_OPTIONS": "halt_on_error=1 print_stacktrace=1 exitcode=66"}
    res = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=300)
    reports = [r for r in SANITIZER_REPORTS if r in res.stderr]
    assert res.returncode == 0 and not reports, (f"{variant}: exit {res.returncode}, reports {reports}:\n"
                                                 f"{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res.stdout


@pytest.fixture(scope="module")
def tsan_output():
    return run_sanitized("tsan")


def test_emulated_kernels_under_thread_sanitizer(tsan_output):
    assert tsan_output.count("tpc ") == 4 and tsan_output.count("susa ") == 7


def test_emulated_kernels_under_address_and_ub_sanitizer(tsan_output):
    """ASan + UBSan: no report, and the same results as the TSan build (the same kernels, other instrumentation)."""
    assert run_sanitized("asan") == tsan_output
