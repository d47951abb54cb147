"""The H200 roofline model (pyengine/perf_model.py): hand-computed launches, and per recorded forward the GEMM +
attention FLOPs equal what pyengine.bench counts on the eager model (SPEC.md §1)."""
import pytest

from pyengine import bench as pb
from pyengine import launch_record as lr
from pyengine import perf_model as pm


def test_ln_linear_launch_by_hand():
    # MHFormer's fused QKV-style launch: M=702 rows, 3 groups of N=512 from K=512, LN prologue, bf16, residual
    args = {"x_ptr": "bf16[702,1536]", "M": 702, "N": 512, "K": 512, "HAS_LN": True, "has_res": 1,
            "DOT_PRECISION": "ieee"}
    c = pm.launch_cost("pyengine.kernels.ln_linear:_ln_linear_kernel", args, [44, 3, 1])
    flops = 2 * 702 * 512 * 512 * 3
    nbytes = 2 * 3 * (702 * 512 + 512 * 512 + 512 + 2 * 702 * 512 + 2 * 512)  # x, W, b, y + res, LN w/b
    assert (c.flops, c.bytes, c.peak) == (flops, nbytes, "bf16")
    assert c.seconds == pytest.approx(max(flops / 790e12, nbytes / 4.3e12) + 4e-6, rel=1e-12)
    assert c.bound == "memory"  # 8.05 MB / 4.3 TB/s = 1.87 us > 1.104 GFLOP / 790 TFLOP/s = 1.40 us
    # fp32: TF32 dots run at half the bf16 peak, exact fp32 dots at the FMA peak
    tf32 = pm.launch_cost("_ln_linear_kernel", {**args, "x_ptr": "fp32[702,1536]", "DOT_PRECISION": "tf32"},
                          [44, 3, 1])
    ieee = pm.launch_cost("_ln_linear_kernel", {**args, "x_ptr": "fp32[702,1536]"}, [44, 3, 1])
    assert (tf32.peak, ieee.peak, tf32.bytes) == ("tf32", "fp32", 2 * nbytes)
    assert ieee.seconds == pytest.approx(flops / 60e12 + 4e-6, rel=1e-12)


def test_attention_launch_by_hand():
    # MixSTE temporal attention: B*J = 34 sequences of 243 frames, 8 heads of 64, bf16
    args = {"q_ptr": "bf16[34,1,243,8,64]", "G": 1, "H": 8, "D": 64, "Nq": 243, "Nk": 243, "ALLOW_TF32": False}
    c = pm.launch_cost("_attention_fwd_kernel", args, [272, 4, 1])
    flops = 4 * 34 * 8 * 243 * 243 * 64
    nbytes = 2 * 4 * 34 * 243 * 8 * 64  # q, k, v read, out written
    assert (c.flops, c.bytes, c.peak) == (flops, nbytes, "bf16")
    assert c.seconds == pytest.approx(max(flops / 790e12, nbytes / 4.3e12) + 4e-6, rel=1e-12)


def test_unknown_kernel_and_bad_arguments_are_named():
    with pytest.raises(KeyError, match="_susa_stripe_kernel"):
        pm.launch_cost("pyengine.kernels.susa:_susa_stripe_kernel", {}, [1, 1, 1])
    with pytest.raises(ValueError, match="x_ptr: expected a recorded tensor"):
        pm.launch_cost("_layernorm_kernel", {"x_ptr": 3, "M": 1, "K": 1}, [1, 1, 1])
    with pytest.raises(ValueError, match="peak: expected one of"):
        pm.roofline_seconds(1, 1, "fp8")
    with pytest.raises(KeyError, match="no recorded forward 'mhformer-27/bf16/b2'"):
        pm.predict_forward("mhformer-27/bf16/b2")


def _eager_flops(case, batch):
    """pyengine.bench's count of one call (SPEC's definition), minus the work the fused HoT skips: its recovery
    query ``linear_q(x_token)`` is the same for every window and joint, so the engine projects it once per
    forward (2 F C^2) where the eager model projects the expanded copy (B J times)."""
    arch, config = pb.case_config(case, "full")
    flops = pb.model_flops(arch, config)["total"] * batch
    if arch == "hot_mixste":
        F, J, C = config["frames"], 17, 512
        flops -= (batch * J - 1) * 2 * F * C * C
    return flops


@pytest.mark.parametrize("case", lr.MODEL_CASES)
def test_kernel_flops_of_each_forward_equal_the_eager_count(case):
    for _, precision, batch in [f for f in lr.headline_forwards() if f[0] == case]:
        p = pm.predict_forward(lr.forward_label(case, precision, batch))
        assert p.dot_flops == _eager_flops(case, batch), (case, precision, batch)
        assert p.launches > 50 and p.seconds > p.launches * pm.LAUNCH_S


def test_predictions_order_like_the_precisions():
    """bf16 faster than TF32 faster than fp32, throughput batch slower than batch 2, on every model."""
    for case in lr.MODEL_CASES:
        big = pb.THROUGHPUT_BATCH["full"][pb.CASES[case][0]]
        t = {(prec, b): pm.predict_forward(lr.forward_label(case, prec, b)).seconds
             for prec in lr.PRECISIONS for b in (2, big)}
        for b in (2, big):
            assert t["bf16", b] < t["tf32", b] < t["fp32", b], case
        assert all(t[prec, big] > t[prec, 2] for prec in lr.PRECISIONS)


def test_predict_row_bases():
    recorded = {"case": "mixste-243", "size": "full", "windows": 32, "dtype": "bfloat16", "flops": 1.0}
    assert pm.predict_row(recorded) == (pm.predict_forward("mixste-243/bf16/b32").seconds, "k")
    small = {**recorded, "size": "small", "flops": 1e12, "bytes": 1e9}
    assert pm.predict_row(small) == (pytest.approx(1e12 / 790e12 + 4e-6), "c")
    assert pm.predict_row({**small, "dtype": "float32", "tf32": True})[0] == pytest.approx(1e12 / 395e12 + 4e-6)
    assert pm.predict_row({"impl": "peak", "variant": "matmul-bf16-8192", "flops": 2 * 8192 ** 3})[0] == \
        pytest.approx(2 * 8192 ** 3 / 790e12 + 4e-6)
    assert pm.predict_row({"dtype": "bfloat16"}) is None  # nothing counted
    assert pm.predict_row({"dtype": "int8", "flops": 1}) is None


def test_table_lists_every_distinct_launch():
    text = pm.table("tpc_mhformer-351/bf16/b2")
    p = pm.predict_forward("tpc_mhformer-351/bf16/b2")
    assert text.count("\n| `") == len(p.rows) and "tpc_select_kernel" in text and "ms predicted on the H200" in text
