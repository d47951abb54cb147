"""The device's measured peaks, in the same run as the other rows: a matmul (bf16 8192^3 on CUDA, fp32 1024^3 on
CPU) and a device copy (1 GiB on CUDA, 128 MiB on CPU; read + write counted). report.py divides every row's
achieved FLOP/s and bytes/s by these (tiny sizes under --benchmark-disable)."""
import pytest

from common import DEVICE, time_rows
from pyengine import bench as pb


@pytest.mark.parametrize("kind", ["matmul", "copy"])
def test_peak(benchmark, kind):
    cases = pb.peak_cases(DEVICE, small=benchmark.disabled)
    name = next(n for n in cases if n.startswith(kind))
    fn, args, flops, nbytes = cases[name]
    time_rows(benchmark, lambda *a: fn(*a), [args], group="peaks",
              extra={"impl": "peak", "variant": name, "flops": flops, "bytes": nbytes})
