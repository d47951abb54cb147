"""The kernels' smallest calls, for compute-sanitizer (step 4 of benchmarks/gpu_suite.py).

    compute-sanitizer --tool memcheck  python benchmarks/gpu_sanitize.py            # CUDA + Triton kernels
    compute-sanitizer --tool racecheck python benchmarks/gpu_sanitize.py --cuda-only

Each call is checked against the CPU implementation too (exit 1 on a mismatch), so a run that the sanitizer
passes also proves the results. The caching allocator stays on (as in production); no CUDA graphs, no compile.
Small shapes keep the instrumented run within its time box; odd sizes exercise the bounds checks."""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def cuda_kernels(torch, failures):
    from pyengine.models.susa import HSUSA, WSUSA
    from pyengine.ops.susa import susa
    from pyengine.ops.tpc_select import tpc_select
    from pyengine.testing import randomize_, rel_error

    for n, c, keep, center in ((27, 16, 9, None), (31, 5, 10, 15), (81, 33, 27, 40)):
        x = torch.randn(2, n, c)
        got = tpc_select(x.cuda(), keep, center=center, backend="cuda").cpu()
        if not torch.equal(got, tpc_select(x, keep, center=center, backend="cpp")):
            failures.append(f"tpc_select cuda N={n} C={c} keep={keep} center={center}")
    for cls, direction in ((HSUSA, "h"), (WSUSA, "w")):
        for ln in (True, False):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                m = randomize_(cls(8, ln_enable=ln), seed=1).to(dtype)
                params = [m.group_weight, m.mean_conv.conv.weight, m.mean_conv.conv.bias, m.conv.conv.weight,
                          m.conv.conv.bias, m.ln.weight if ln else None, m.ln.bias if ln else None]
                x = torch.randn(2, 8, 7, 5).to(dtype)
                got = susa(x.cuda(), *[None if p is None else p.cuda() for p in params], direction=direction,
                           backend="cuda").cpu()
                want = susa(x, *params, direction=direction, backend="cpp")
                if rel_error(got, want) > (1e-5 if dtype == torch.float32 else 2e-2):
                    failures.append(f"susa cuda {direction} ln={ln} {dtype}: {rel_error(got, want):.3g}")


def triton_kernels(torch, failures):
    from pyengine.models.tpc import dpc_knn_select
    from pyengine.ops.attention import attention, attention_ref
    from pyengine.ops.gather_tokens import gather_tokens, gather_tokens_ref
    from pyengine.ops.layernorm import layernorm, layernorm_ref
    from pyengine.ops.ln_linear import ln_linear, ln_linear_ref
    from pyengine.ops.tpc_select import tpc_select
    from pyengine.testing import rel_error

    def close(name, got, want, tol=1e-4):
        if not rel_error(got, want) <= tol:
            failures.append(f"{name}: {rel_error(got, want):.3g}")

    x, w, b = torch.randn(37, 2 * 24, device="cuda"), torch.randn(2, 40, 24, device="cuda") * 0.2, \
        torch.randn(2, 40, device="cuda")
    lw, lb, r = torch.randn(2, 24, device="cuda"), torch.randn(2, 24, device="cuda"), torch.randn(37, 80, device="cuda")
    close("ln_linear", ln_linear(x, w, b, ln_weight=lw, ln_bias=lb, activation="gelu", residual=r, backend="triton"),
          ln_linear_ref(x, w, b, ln_weight=lw, ln_bias=lb, activation="gelu", residual=r))
    y, k = torch.randn(33, 27, device="cuda"), torch.randn(27, device="cuda")
    close("layernorm", layernorm(y, k, k, eps=1e-6, add=y, residual=y, backend="triton"),
          layernorm_ref(y, k, k, eps=1e-6, add=y, residual=y))
    q, kk, v = (torch.randn(3, 2, n, 2, 3, device="cuda") for n in (5, 7, 7))
    close("attention", attention(q, kk, v, backend="triton"), attention_ref(q, kk, v))
    t = torch.randn(2, 31, 3 * 10, device="cuda")
    idx = torch.stack([torch.randperm(31, device="cuda")[:9].sort().values for _ in range(2)])
    if not torch.equal(gather_tokens(t, idx, backend="triton"), gather_tokens_ref(t, idx)):
        failures.append("gather_tokens triton")
    f = torch.randn(2, 31, 5)
    if not torch.equal(tpc_select(f.cuda(), 10, center=15, backend="triton").cpu(), dpc_knn_select(f, 10, center=15)):
        failures.append("tpc_select triton")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuda-only", action="store_true", help="only the CUDA C++ kernels (racecheck)")
    args = p.parse_args(argv)
    import torch
    torch.manual_seed(0)
    failures = []
    cuda_kernels(torch, failures)
    if not args.cuda_only:
        triton_kernels(torch, failures)
    torch.cuda.synchronize()
    for f in failures:
        print("MISMATCH", f)
    print(f"gpu_sanitize: {'all calls match' if not failures else f'{len(failures)} mismatches'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
