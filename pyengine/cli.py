"""The ``pyengine`` command line: ``verify``, ``lift`` and ``bench``.

Exit codes: 0 success; 1 a check failed (``verify``: a deviation over its tolerance); 2 bad usage or bad input
(unreadable checkpoint or keypoint file, unknown architecture, contradicting config, missing keypoints, an
unavailable backend, a missing ffmpeg for .mp4).
"""
import argparse
import json
import os
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_INTS = ("frames", "channel", "d_hid", "layers", "depth", "heads", "token_num", "layer_index",
               "channels", "in_channels", "out_channels")
LIFT_ARCHS = ("mhformer", "tpc_mhformer", "mixste", "tpc_mixste", "hot_mixste")
EPILOG = "exit codes: 0 success, 1 a check failed (verify), 2 bad usage or bad input"
RANDOM_BANNER = ("*** RANDOM WEIGHTS (seed {seed}): no checkpoint was loaded, so the 3D poses are MEANINGLESS. "
                 "This only demonstrates the pipeline; pass --checkpoint PATH for real results. ***")


def _add_config_options(p):
    for name in CONFIG_INTS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                       help=f"hyperparameter {name} (published name)")
    p.add_argument("--tie-break", dest="tie_break", default=None, choices=["index", "strict"],
                   help="TPC density tie rule (default index)")


def _add_lift_parser(sub):
    p = sub.add_parser(
        "lift", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="lift 2D keypoint files (VideoPose3D .npz, MMPose .json, .npy, .csv) to 3D poses",
        description="Lift 2D keypoint sequences to 3D with a pose lifter and save [T, 17, 3] root-relative 3D joints\n"
                    "(camera frame, key 'positions_3d') to an .npz per input. Inputs: VideoPose3D-style .npz\n"
                    "('positions_2d'; pickled dicts are read with a restricted unpickler) or pyengine's sample .npz\n"
                    "('keypoints_2d'), MMPose prediction .json (COCO-17, converted to Human3.6M-17), .npy / .csv\n"
                    "[T, 17, 2] (docs/lifting.md). Under torchrun (WORLD_SIZE > 1) the input files are shared out\n"
                    "over the ranks: torchrun --nproc-per-node N -m pyengine lift FILES... -o OUTDIR")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="keypoint file(s)")
    p.add_argument("-o", "--output", required=True,
                   help="output .npz for a single input; a directory (created; one <input name>.npz per input) "
                        "when several inputs are given or OUTPUT does not end in .npz")
    w = p.add_argument_group("model")
    w.add_argument("--checkpoint", default=None, help="load weights from this .pth/.pt/.bin/.safetensors file")
    w.add_argument("--random-weights", action="store_true",
                   help="no checkpoint: build --arch with seeded random weights (a pipeline demo; the output is "
                        "meaningless and says so loudly)")
    w.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    w.add_argument("--arch", default=None, choices=LIFT_ARCHS,
                   help="architecture; inferred from --checkpoint (TPC variants need --arch or --token-num), "
                        "default mhformer with --random-weights")
    w.add_argument("--backend", default="auto", help="auto | reference | triton | cuda | cpp (default auto)")
    w.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype (default float32)")
    w.add_argument("--device", default=None,
                   help="torch device (default cuda, or cuda:LOCAL_RANK under torchrun, when available; else cpu)")
    _add_config_options(w)
    k = p.add_argument_group("keypoints")
    k.add_argument("--width", type=float, default=None,
                   help="image width in pixels (needed unless the file gives it or --normalized)")
    k.add_argument("--height", type=float, default=None, help="image height in pixels")
    k.add_argument("--normalized", action="store_true",
                   help="the keypoints are already screen-normalised (X / w * 2 - [1, h / w]); no width/height")
    k.add_argument("--format", default=None, choices=["npz", "json", "npy", "csv"],
                   help="input format (default: by file extension)")
    k.add_argument("--layout", default=None, choices=["h36m", "coco"],
                   help="joint order of .npy / .csv / sample .npz input (default h36m; .json is always COCO-17)")
    k.add_argument("--subject", default=None, help="VideoPose3D .npz: subject (needed if the file has several)")
    k.add_argument("--action", default=None, help="VideoPose3D .npz: action (needed if the file has several)")
    k.add_argument("--camera", type=int, default=None, help="VideoPose3D .npz: camera index (default 0)")
    k.add_argument("--score-threshold", type=float, default=0.3,
                   help="keypoints scoring below this count as missing (default 0.3)")
    k.add_argument("--interpolate", action="store_true",
                   help="fill missing keypoints (NaN or low score) linearly in time, holding the ends; without "
                        "it missing keypoints are an error (exit 2)")
    r = p.add_argument_group("inference and output")
    r.add_argument("--no-flip", dest="flip", action="store_false",
                   help="turn off flip test-time augmentation (on by default, as published)")
    r.add_argument("--batch-size", type=int, default=64, help="windows or chunks per model call (default 64)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (shown by default for inputs of 1000 frames or more)")
    r.add_argument("--render", default=None, metavar="OUT.gif|OUT.mp4",
                   help="also draw the 2D input beside the 3D output (one input only; .mp4 needs ffmpeg)")
    r.add_argument("--render-fps", type=float, default=25.0, help="frames per second of --render (default 25)")
    r.add_argument("--render-every", type=int, default=1,
                   help="draw every N-th frame in --render (default 1; larger is faster and smaller)")
    return p


def build_parser():
    parser = argparse.ArgumentParser(prog="pyengine", description=__doc__.split("\n")[0], epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify", help="run a model on the shipped 2D sample and compare every accelerated module with an fp64 "
                       "eager reference", epilog=EPILOG,
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
    _add_config_options(v)
    _add_lift_parser(sub)
    # Listed for --help only: main() hands everything after "bench" to pyengine.bench's own parser.
    sub.add_parser("bench", add_help=False, help="time eager PyTorch, torch.compile and pyengine backends side by "
                                                 "side (pyengine bench --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "lift":
        return lift_main(args)
    return verify_main(args)


def verify_main(args):
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


def bench_main(argv):
    """``pyengine bench ...``: delegate to ``pyengine.bench`` (imported only now)."""
    try:
        from . import bench
    except ModuleNotFoundError as exc:
        if exc.name not in ("pyengine.bench", __package__ + ".bench"):
            raise
        print("pyengine bench: error: the benchmark module pyengine.bench is not installed in this version of "
              "pyengine", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="pyengine bench", epilog=EPILOG)
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


class UsageError(ValueError):
    pass


def _output_paths(inputs, output):
    """One output .npz path per input (see -o's help)."""
    if len(inputs) == 1 and output.lower().endswith(".npz") and not os.path.isdir(output):
        return [output]
    names = [os.path.splitext(os.path.basename(p))[0] + ".npz" for p in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"-o {output}: several inputs would write the same output file(s) {dupes}; rename them "
                         f"or lift them separately")
    return [os.path.join(output, n) for n in names]


def _build_model(args, device):
    """``(model, source)`` from --checkpoint or --random-weights."""
    import inspect

    from . import arch as archs
    from .load import load
    from .testing import randomize_

    config = {k: getattr(args, k) for k in CONFIG_INTS + ("tie_break",) if getattr(args, k) is not None}
    dtype = DTYPES[args.dtype]
    if args.checkpoint is not None:
        return load(args.checkpoint, arch=args.arch, backend=args.backend, dtype=dtype, device=device,
                    **config), args.checkpoint
    arch = args.arch or "mhformer"
    kwargs = {**archs.constructor_args(arch), **config}
    unknown = sorted(set(config) - set(archs.constructor_args(arch)))
    if unknown:
        raise UsageError(f"config: unknown options {unknown} for arch {arch!r}")
    missing = sorted(k for k, v in kwargs.items() if v is inspect.Parameter.empty)
    if missing:
        raise UsageError(f"arch {arch!r} with random weights needs {missing}")
    module = randomize_(archs.MODELS[arch](**kwargs), args.seed)
    return load(module, backend=args.backend, dtype=dtype, device=device), f"random weights (seed {args.seed})"


def _lift_one(model, args, path, out_path, random_weights):
    import numpy as np

    from .data.synth import JOINT_NAMES, PARENTS
    from .keypoints import load_keypoints
    from .lift import lift

    kp, raw = load_keypoints(path, width=args.width, height=args.height, normalized=args.normalized or None,
                             score_threshold=args.score_threshold, interpolate=args.interpolate,
                             format=args.format, layout=args.layout, subject=args.subject, action=args.action,
                             camera=args.camera)
    start = time.perf_counter()
    pos = lift(model, kp, flip=args.flip, batch_size=args.batch_size, progress=args.progress)
    seconds = time.perf_counter() - start
    info = model.pyengine
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    np.savez(out_path, positions_3d=pos, keypoints_2d=kp, joint_names=np.array(JOINT_NAMES),
             parents=np.array(PARENTS, dtype=np.int64), arch=np.array(info.arch),
             config=np.array(json.dumps(info.config, default=str)), backend=np.array(info.backend),
             flip=np.array(args.flip), random_weights=np.array(random_weights), source=np.array(raw.source))
    print(f"lifted {len(pos)} frames: {raw.source} -> {out_path} ({seconds:.1f} s, {len(pos) / seconds:.1f} "
          f"frames/s, flip {'on' if args.flip else 'off'})")
    return kp, pos


def lift_main(args):
    from . import distributed
    from .backends import BackendUnavailableError
    from .checkpoint import CheckpointError
    from .render import RenderError

    ctx = None
    try:
        if (args.checkpoint is None) == (not args.random_weights):
            raise UsageError("give exactly one of --checkpoint PATH (real weights) or --random-weights (a demo "
                             "with meaningless output)")
        if args.render:
            if len(args.inputs) != 1:
                raise UsageError("--render works with a single input file")
            from .render import check_output
            check_output(args.render)
        if args.batch_size < 1:
            raise UsageError(f"--batch-size: expected >= 1, got {args.batch_size}")
        outputs = _output_paths(args.inputs, args.output)
        for path in args.inputs:  # every rank checks every input, so all fail alike on a typo
            if not os.path.isfile(path):
                raise FileNotFoundError(f"input {path!r}: no such file")
        ctx = distributed.from_env()
        device = args.device or distributed.default_device(ctx)
        distributed.init(ctx, device)
        model, source = _build_model(args, device)
        if args.random_weights:
            print(RANDOM_BANNER.format(seed=args.seed), file=sys.stderr)
            print(RANDOM_BANNER.format(seed=args.seed))
        if ctx.rank == 0:
            info = model.pyengine
            print(f"model: {info.arch} ({', '.join(f'{k}={v}' for k, v in info.config.items())}); weights: "
                  f"{source}; backend {info.backend}; {args.dtype} on {device}"
                  + (f"; {ctx.world_size} ranks" if ctx.distributed else ""))
        mine = distributed.shard(zip(args.inputs, outputs), ctx)
        for path, out_path in mine:
            kp, pos = _lift_one(model, args, path, out_path, args.random_weights)
            if args.render:
                from .render import render
                title = f"{model.pyengine.arch}" + (" - RANDOM WEIGHTS" if args.random_weights else "")
                render(args.render, kp, pos, fps=args.render_fps, every=args.render_every, title=title)
                print(f"rendered {args.render}")
        code = 0
    except (UsageError, CheckpointError, BackendUnavailableError, RenderError, ValueError, TypeError,
            FileNotFoundError) as exc:
        print(f"pyengine lift: error: {exc}", file=sys.stderr)
        code = 2
    if ctx is not None and ctx.distributed:
        code = distributed.agree_exit_code(code, ctx, args.device or distributed.default_device(ctx))
    return code


if __name__ == "__main__":
    sys.exit(main())
