"""The ``pyengine`` command line. Exit codes: 0 success, 1 a check failed (deviation over tolerance),
2 bad usage or bad input (unreadable checkpoint, unknown architecture, contradicting config)."""
import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_INTS = ("frames", "channel", "d_hid", "layers", "depth", "heads", "token_num", "layer_index",
               "channels", "in_channels", "out_channels")


def build_parser():
    parser = argparse.ArgumentParser(prog="pyengine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify", help="run a model on the shipped 2D sample and compare every accelerated module with an fp64 "
                       "eager reference",
        description="Build a model (random weights, or --checkpoint), run it on the 2D walking sequence shipped "
                    "with pyengine, and print, per module, the backend it ran on and its deviation from an fp64 "
                    "eager reference with the same weights. Exit code 1 if any deviation exceeds its tolerance.")
    v.add_argument("--arch", default=None,
                   help="architecture (mhformer, tpc_mhformer, mixste, tpc_mixste, hot_mixste, hsusa, wsusa, "
                        "hwsusa, sx_shuffle_unit, px_shuffle_unit); default mhformer, or inferred from --checkpoint")
    v.add_argument("--checkpoint", default=None, help="load weights from this .pth/.pt/.bin/.safetensors file")
    v.add_argument("--backend", default="auto", help="auto | reference | triton | cuda | cpp (default auto)")
    v.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype (default float32)")
    v.add_argument("--device", default="cpu", help="torch device (default cpu)")
    v.add_argument("--batch", type=int, default=2, help="number of windows (default 2)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    for name in CONFIG_INTS:
        v.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                       help=f"hyperparameter {name} (published name)")
    v.add_argument("--tie-break", dest="tie_break", default=None, choices=["index", "strict"],
                   help="TPC density tie rule (default index)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from . import verify
    from .checkpoint import CheckpointError
    from .load import BackendUnavailableError

    config = {k: getattr(args, k) for k in CONFIG_INTS + ("tie_break",) if getattr(args, k) is not None}
    arch = args.arch
    if arch is None and args.checkpoint is None:
        arch = "mhformer"
        config.setdefault("frames", 81)
    try:
        rows, meta = verify.run(arch=arch, checkpoint=args.checkpoint, backend=args.backend,
                                dtype=DTYPES[args.dtype], device=args.device, batch=args.batch, seed=args.seed,
                                **config)
    except (CheckpointError, BackendUnavailableError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"pyengine verify: error: {exc}", file=sys.stderr)
        return 2
    print(verify.format_table(rows, meta))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
