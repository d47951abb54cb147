"""Full-size validation on a GPU (step 3 of benchmarks/gpu_suite.py): the headline models at their published
sizes through ``pyengine.load(..., validate=True)`` on each GPU backend and precision, against fp64 eager.

    python benchmarks/gpu_validate.py --out DIR [--deadline UNIX_TIME] [--dry-run]
    python benchmarks/gpu_validate.py --out DIR --device cpu --size small --backends cpp   (CI's smoke run)

Each case is one first call (batch 2) that compares the fused model with an fp64 eager reference and with eager
at the same precision (tolerance = max(2 x eager's own deviation, the dtype's floor)). Results are appended to
DIR/validation.jsonl as they come (a killed run keeps what finished) and summarised in DIR/validation.md.
Cases past the deadline are recorded as "not run"."""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CASES = ["mhformer-351", "tpc_mhformer-351", "mixste-243", "hot_mixste-243"]  # pyengine.bench.CASES names
BACKENDS = ["triton", "cuda"]
DTYPES = ["float32", "bfloat16"]
NEEDED_S = 15  # a case's rough cost (Triton compiles on the first case dominate); skipped when less is left


def plan(backends=BACKENDS):
    return [(case, backend, dtype) for case in CASES for dtype in DTYPES for backend in backends]


def run_case(case, backend, dtype, device="cuda", size="full"):
    import torch

    import pyengine
    from pyengine import bench as pb

    arch, config = pb.case_config(case, size)
    ref = pb.build_model(arch, config)
    dt = pb.DTYPES[dtype]
    start = time.time()
    model = pyengine.load(ref, backend=backend, device=device, dtype=dt, validate=True, cuda_graphs=False)
    x = torch.randn(2, model.frames, 17, 2, generator=torch.Generator().manual_seed(0)).to(device) * 0.3
    kw = {"return_index": True} if pyengine.arch.SPECS[arch].returns_index_on_request else {}
    with torch.no_grad():
        try:
            model(x, **kw)
            status = "ok"
        except pyengine.ValidationError as exc:
            status = f"FAILED: {exc}"
    if device != "cpu":
        torch.cuda.synchronize()
    v = model.pyengine.validation
    return {"case": case, "backend": backend, "dtype": dtype, "status": status, "deviation": v["deviation"],
            "tolerance": v["tolerance"], "seconds": round(time.time() - start, 1)}


def markdown(rows):
    lines = ["| case | backend | dtype | deviation vs fp64 | tolerance | status | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        dev = f"{r['deviation']:.2e}" if isinstance(r.get("deviation"), float) else "-"
        tol = f"{r['tolerance']:.1e}" if isinstance(r.get("tolerance"), float) else "-"
        lines.append(f"| {r['case']} | {r['backend']} | {r['dtype']} | {dev} | {tol} | "
                     f"{r['status'].splitlines()[0][:160]} | {r.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--deadline", type=float, default=None, help="Unix time after which no case starts")
    p.add_argument("--dry-run", action="store_true", help="print the cases and exit")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: triton,cuda)")
    args = p.parse_args(argv)
    backends = args.backends.split(",")
    if args.dry_run:
        for case in plan(backends):
            print("validate", *case)
        return 0
    os.makedirs(args.out, exist_ok=True)
    rows, failed = [], False
    with open(os.path.join(args.out, "validation.jsonl"), "a") as log:
        for case, backend, dtype in plan(backends):
            if args.deadline and time.time() + NEEDED_S > args.deadline:
                row = {"case": case, "backend": backend, "dtype": dtype, "status": "not run (time box spent)"}
            else:
                try:
                    row = run_case(case, backend, dtype, args.device, args.size)
                except Exception as exc:  # noqa: BLE001 - every case reports, whatever breaks
                    row = {"case": case, "backend": backend, "dtype": dtype,
                           "status": f"ERROR {type(exc).__name__}: {exc}"}
            failed |= not row["status"].startswith(("ok", "not run"))
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"validate {case} {backend} {dtype}: {row['status'].splitlines()[0][:200]}", flush=True)
    with open(os.path.join(args.out, "validation.md"), "w") as f:
        f.write(markdown(rows))
    print(markdown(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
