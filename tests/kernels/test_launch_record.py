"""The launch recorder (pyengine/launch_record.py) derives the variants Triton's JIT compiles on a GPU, its dry
run records what an executed forward launches, and the committed variants file matches the code."""
import pytest
import torch
import triton
import triton.language as tl

from pyengine import launch_record as lr

REGENERATE = "stale: regenerate with `python -m pyengine.launch_record --write`"


@triton.jit
def _toy_kernel(x_ptr, y_ptr, n, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs * stride, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def test_variant_follows_the_jit_specialisation_rules():
    """Pointers: 16-divisible iff the byte offset inside the (512-aligned) allocation is; integers: 1 becomes a
    constexpr, multiples of 16 get tt.divisibility, others nothing; the launch options are kept."""
    buf = torch.zeros(8, 48)
    v = lr.variant_of(_toy_kernel.fn, (buf, buf[:, 4:], 33, 1), {"BLOCK": 64, "num_warps": 2})
    assert v["signature"] == {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "stride": "constexpr",
                              "BLOCK": "constexpr"}
    assert v["constexprs"] == {"stride": 1, "BLOCK": 64}
    assert v["attrs"] == {"x_ptr": [["tt.divisibility", 16]], "y_ptr": [["tt.divisibility", 16]]}  # 16 B offset
    assert v["options"]["num_warps"] == 2
    # a view 1 element in (4 B): not aligned; n = 32 and a bf16 tensor
    v = lr.variant_of(_toy_kernel.fn, (buf[:, 1:], buf.to(torch.bfloat16), 32, 48), {"BLOCK": 64})
    assert v["signature"]["x_ptr"] == "*fp32" and v["signature"]["y_ptr"] == "*bf16"
    assert v["signature"]["stride"] == "i32"
    assert v["attrs"] == {"y_ptr": [["tt.divisibility", 16]], "n": [["tt.divisibility", 16]],
                          "stride": [["tt.divisibility", 16]]}
    # the column slice of a [M, 3C] buffer at column C: offset C * 2 bytes, aligned iff C % 8 == 0 (bf16)
    qkv = torch.zeros(4, 3 * 20, dtype=torch.bfloat16)
    assert "x_ptr" not in lr.variant_of(_toy_kernel.fn, (qkv[:, 20:], qkv, 2, 2), {"BLOCK": 16})["attrs"]
    assert "x_ptr" in lr.variant_of(_toy_kernel.fn, (qkv[:, 24:], qkv, 2, 2), {"BLOCK": 16})["attrs"]


def test_record_captures_launches_and_restores():
    x, y = torch.arange(40.0), torch.zeros(40)
    with lr.record(execute=True, gpu_configs=False) as rec:
        _toy_kernel[(1,)](x, y, 40, 1, BLOCK=64)
    assert torch.equal(x, y)  # executed
    assert len(rec.launches) == 1 and rec.launches[0]["grid"] == [1, 1, 1]
    assert rec.launches[0]["args"]["x_ptr"] == "fp32[40]" and rec.launches[0]["args"]["n"] == 40
    y.zero_()
    with lr.record(execute=False) as rec:
        _toy_kernel[(2, 3)](x, y, 40, 1, BLOCK=64)
    assert not y.any()  # dry: not executed
    assert rec.launches[0]["grid"] == [2, 3, 1]
    _toy_kernel[(1,)](x, y, 40, 1, BLOCK=64)  # the interpreter's launch is back
    assert torch.equal(x, y)
    with pytest.raises(ValueError, match="execute=True with gpu_configs=True"):
        with lr.record(execute=True, gpu_configs=True):
            pass


@pytest.mark.parametrize("case", ["tpc_mhformer-351", "hot_mixste-243"])
def test_dry_run_records_what_an_executed_forward_launches(case):
    """The file is recorded dry (kernels not run): no launch may depend on values the kernels compute. The TPC
    cases cover the one data path (selection -> gather; hot_mixste's gather also adds the token embedding)."""
    executed = lr.record_forward(case, "fp32", 2, size="small", execute=True, gpu_configs=False)
    dry = lr.record_forward(case, "fp32", 2, size="small", execute=False, gpu_configs=False)
    assert len(executed) > 10
    assert dry == executed


def test_gpu_configs_pick_the_cuda_configuration():
    """With gpu_configs the launchers see INTERPRETING=False: TF32 dots and the INTERPRETING constexpr off."""
    launches = lr.record_forward("mixste-243", "tf32", 2, size="small")
    lin = [launch["variant"] for launch in launches if launch["variant"]["kernel"].endswith("_ln_linear_kernel")]
    assert lin and all(v["constexprs"]["DOT_PRECISION"] == "tf32" and v["constexprs"]["INTERPRETING"] is False
                       for v in lin)
    from pyengine.kernels import ln_linear
    assert ln_linear.INTERPRETING is True  # restored


@pytest.fixture(scope="module")
def recorded_file():
    return lr.load_file()


def test_kernel_parameters_unchanged_since_recording(recorded_file):
    assert recorded_file["kernel_params"] == lr.kernel_params(), f"a kernel's parameters changed: {REGENERATE}"


@pytest.mark.parametrize("label", ["tpc_mhformer-351/bf16/b2", "hot_mixste-243/tf32/b2"])
def test_variants_file_matches_a_fresh_recording(recorded_file, label):
    """Re-record two full-size forwards (dry: seconds) and compare launch for launch with the file: a changed
    launcher, fused model or kernel configuration shows here."""
    case, precision, batch = label.split("/")
    launches = lr.record_forward(case, precision, int(batch[1:]))
    index = {lr.variant_key({k: v for k, v in var.items() if k != "used_by"}): i
             for i, var in enumerate(recorded_file["variants"])}
    missing = [launch["variant"] for launch in launches if lr.variant_key(launch["variant"]) not in index]
    assert not missing, f"{label}: {len(missing)} launches with unrecorded variants ({missing[0]}): {REGENERATE}"
    assert lr.compress(launches, index) == recorded_file["forwards"][label], f"{label}: {REGENERATE}"


def test_variants_file_covers_every_headline_forward(recorded_file):
    labels = {lr.forward_label(*f) for f in lr.headline_forwards()}
    assert set(recorded_file["forwards"]) == labels
    used = {label for v in recorded_file["variants"] for label in v["used_by"]}
    assert used == labels
    kernels = {v["kernel"].split(":")[1] for v in recorded_file["variants"]}
    assert {"_ln_linear_kernel", "_layernorm_kernel", "_attention_fwd_kernel", "_tpc_select_kernel",
            "_tpc_distance_kernel", "_gather_tokens_kernel"} <= kernels
