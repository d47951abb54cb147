"""The ``pyengine`` command line: ``verify``, ``lift`` and ``bench``.

Exit codes: 0 success; 1 a check failed (``verify``: a deviation over its tolerance); 2 bad usage or bad input
(a bad option value, unreadable checkpoint or keypoint file, unknown architecture, contradicting config, missing
keypoints or frames, an unavailable backend or device, a missing ffmpeg for .mp4, an existing output without
--overwrite), reported as one line on stderr without a traceback; 3 an internal error (a bug: the traceback is
printed, please report it).
"""
import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings

import torch

from .arch import SPECS as _SPECS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_INTS = ("frames", "channel", "d_hid", "layers", "depth", "heads", "token_num", "layer_index",
               "channels", "in_channels", "out_channels", "dim_feat", "dim_rep", "num_heads", "maxlen")
CONFIG_NUMBERS = ("mlp_ratio",)  # MotionBERT's MLP width factor: an int (2, 4) or a float, as published
# Every registry lifter (pyengine.lift feeds MotionBERT's confidence channel from the keypoint scores).
LIFT_ARCHS = tuple(sorted(n for n, s in _SPECS.items() if s.lifter))
EPILOG = "exit codes: 0 success, 1 a check failed (verify), 2 bad usage or bad input, 3 internal error (a bug)"
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
AT_LEAST_0 = ("layer_index",)  # a block index; the other config integers count things (at least 1)
RANDOM_BANNER = ("*** RANDOM WEIGHTS (seed {seed}): no checkpoint was loaded, so the 3D poses are MEANINGLESS. "
                 "This only demonstrates the pipeline; pass --checkpoint PATH for real results. ***")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``PROG: error: MESSAGE (see PROG --help)`` on stderr, exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _float_in(low, high, low_open, what):
    """An argparse type: a finite float in the interval ``what`` describes (one message shape for all)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_float = _float_in(0.0, math.inf, True, "a positive finite number")
_unit_interval = _float_in(0.0, 1.0, False, "a number in [0, 1]")
_open_unit_interval = _float_in(0.0, 1.0, True, "a number in (0, 1]")


def _positive_number(text):
    """An int when ``text`` is one (``--mlp-ratio 4`` stays the published int), else a positive finite float."""
    try:
        value = int(text)
    except ValueError:
        value = _positive_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


TRACK_OPTIONS = {"min_oks": "--min-oks", "max_gap": "--max-gap", "min_length": "--min-track-length"}


def _add_config_options(p):
    for name in CONFIG_INTS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=_int_at_least(0 if name in AT_LEAST_0 else 1),
                       default=None, help=f"hyperparameter {name} (published name)")
    for name in CONFIG_NUMBERS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=_positive_number, default=None,
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
                        "when several inputs are given or OUTPUT has no suffix (any other suffix is an error)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (.npz, --render); without it an existing one is an error "
                        "(exit 2) and nothing is written")
    w = p.add_argument_group("model")
    w.add_argument("--checkpoint", default=None, help="load weights from this .pth/.pt/.bin/.safetensors file")
    w.add_argument("--random-weights", action="store_true",
                   help="no checkpoint: build --arch with seeded random weights (a pipeline demo; the output is "
                        "meaningless and says so loudly)")
    w.add_argument("--seed", type=_int_at_least(0), default=None, help="seed of --random-weights (default 0)")
    w.add_argument("--arch", default=None, choices=LIFT_ARCHS,
                   help="architecture; inferred from --checkpoint (TPC variants need --arch or --token-num), "
                        "default mhformer with --random-weights")
    w.add_argument("--backend", default="auto", help="auto | reference | triton | cuda | cpp (default auto)")
    w.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute dtype (default float32)")
    w.add_argument("--device", default=None,
                   help="torch device (default cuda, or cuda:LOCAL_RANK under torchrun, when available; else cpu)")
    _add_config_options(w)
    k = p.add_argument_group("keypoints")
    k.add_argument("--width", type=_positive_float, default=None,
                   help="image width in pixels (needed unless the file gives it or --normalized; must agree with "
                        "the file's when it has one)")
    k.add_argument("--height", type=_positive_float, default=None, help="image height in pixels")
    k.add_argument("--normalized", action="store_true",
                   help="the keypoints are already screen-normalised (X / w * 2 - [1, h / w]); no width/height")
    k.add_argument("--format", default=None, choices=["npz", "json", "npy", "csv"],
                   help="input format (default: by file extension)")
    k.add_argument("--layout", default=None, choices=["h36m", "coco"],
                   help="joint order of .npy / .csv / sample .npz input (default h36m; .json is always COCO-17)")
    k.add_argument("--subject", default=None, help="VideoPose3D .npz: subject (needed if the file has several)")
    k.add_argument("--action", default=None, help="VideoPose3D .npz: action (needed if the file has several)")
    k.add_argument("--camera", type=_int_at_least(0), default=None,
                   help="VideoPose3D .npz: camera index (default 0)")
    k.add_argument("--score-threshold", type=_unit_interval, default=None,
                   help="in [0, 1]: keypoints scoring below this count as missing (default 0.3; an error for "
                        "inputs without scores)")
    k.add_argument("--interpolate", action="store_true",
                   help="fill missing keypoints (NaN or low score) and frames missing from an MMPose .json "
                        "linearly in time, holding the ends; without it they are an error (exit 2)")
    m = p.add_argument_group("several people (MMPose .json; docs/lifting.md)")
    people = m.add_mutually_exclusive_group()
    people.add_argument("--multi-person", action="store_true",
                        help="track and lift every person, even in a file with one instance per frame (default: "
                             "automatic, on when a frame has several instances or the file several track_ids)")
    people.add_argument("--single-person", action="store_true",
                        help="lift only the highest-scoring instance of each frame (the one-person output format)")
    m.add_argument("--min-oks", type=_open_unit_interval, default=None,
                   help="in (0, 1]: the OKS gate of frame-to-frame assignment when the file has no track_id "
                        "(default 0.3)")
    m.add_argument("--max-gap", type=_int_at_least(0), default=None,
                   help="frames a track may go undetected: shorter gaps are filled (needs --interpolate), longer "
                        "ones end the track (default 10)")
    m.add_argument("--min-track-length", dest="min_length", type=_int_at_least(1), default=None,
                   help="segments spanning fewer frames are reported and skipped (default 10)")
    r = p.add_argument_group("inference and output")
    r.add_argument("--no-flip", dest="flip", action="store_false",
                   help="turn off flip test-time augmentation (on by default, as published)")
    r.add_argument("--batch-size", type=_int_at_least(1), default=64,
                   help="windows or chunks per model call (default 64)")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars (shown by default for inputs of 1000 frames or more, and for --render)")
    r.add_argument("--render", default=None, metavar="OUT.gif|OUT.mp4",
                   help="also draw the 2D input beside the 3D output (one input only; .mp4 needs ffmpeg)")
    r.add_argument("--render-fps", type=_positive_float, default=None,
                   help="frames per second of --render (default: the input's fps when the file gives it, else 25)")
    r.add_argument("--render-every", type=_int_at_least(1), default=1,
                   help="draw every N-th frame in --render (default 1; larger is faster and smaller)")
    return p


def build_parser():
    from . import __version__
    parser = _Parser(prog="pyengine", description=__doc__.split("\n")[0], epilog=EPILOG)
    parser.add_argument("--version", action="version",
                        version=f"pyengine {__version__} (torch {torch.__version__})")
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
    v.add_argument("--batch", type=_int_at_least(1), default=2, help="number of windows (default 2)")
    v.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the random weights (default 0)")
    _add_config_options(v)
    _add_lift_parser(sub)
    e = sub.add_parser(
        "export", epilog=EPILOG, help="write a verified ONNX file of a model (docs/export.md)",
        description="Export a model's eager reference (with the checkpoint's weights) to ONNX, then run the file in "
                    "ONNX Runtime against an fp64 eager reference (verify's tolerance rule, two batch sizes); the "
                    "file is written only if it passes.")
    e.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--checkpoint", default=None, help="load weights from this .pth/.pt/.bin/.safetensors file")
    e.add_argument("--random-weights", action="store_true", help="export a model with random weights (a demo)")
    e.add_argument("--arch", default=None, choices=sorted(_SPECS),
                   help="architecture; inferred from --checkpoint, default mhformer with --random-weights")
    e.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of --random-weights (default 0)")
    e.add_argument("--batch", type=_int_at_least(1), default=2, help="windows in the example input (default 2)")
    e.add_argument("--static-batch", action="store_true", help="fix the batch axis to --batch (default: symbolic)")
    e.add_argument("--opset", type=_int_at_least(7), default=18, help="ONNX opset (default 18)")
    _add_config_options(e)
    # Listed for --help only: main() hands everything after "bench" to pyengine.bench's own parser.
    sub.add_parser("bench", add_help=False, help="time eager PyTorch, torch.compile and pyengine backends side by "
                                                 "side (pyengine bench --help)")
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "bench":
            return bench_main(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command == "lift":
            return lift_main(args)
        if args.command == "export":
            return export_main(args)
        return verify_main(args)
    except KeyboardInterrupt:
        print("pyengine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): not an error of pyengine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception:  # user errors are caught where they happen; anything else is a bug, shown in full
        traceback.print_exc()
        print("pyengine: internal error (a bug, not a problem with your input): please report it with the "
              "traceback above", file=sys.stderr)
        return EXIT_INTERNAL


def _user_errors():
    """The exception types that mean bad usage or bad input (exit 2, one line)."""
    from .backends import BackendUnavailableError
    from .checkpoint import CheckpointError
    from .keypoints import KeypointError
    from .render import RenderError
    return (UsageError, CheckpointError, KeypointError, BackendUnavailableError, RenderError, ValueError, TypeError,
            OSError)


def _fail(command, exc):
    """Print a user error as one line on stderr; returns exit code 2."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"pyengine {command}: error: {text or type(exc).__name__}", file=sys.stderr)
    return EXIT_USAGE


def export_main(args):
    from .onnx_export import ExportError, export

    try:
        if (args.checkpoint is None) == (not args.random_weights):
            raise UsageError("give exactly one of --checkpoint PATH or --random-weights")
        if not args.output.endswith(".onnx"):
            raise UsageError(f"-o: expected a file name ending in .onnx, got {args.output!r}")
        if os.path.exists(args.output) and not args.overwrite:
            raise UsageError(f"-o: {args.output} exists; pass --overwrite to replace it")
        args.backend, args.dtype = "reference", "float32"  # what is exported: the eager reference, in fp32
        model, source = _build_model(args, "cpu")
        if args.random_weights:
            print(RANDOM_BANNER.format(seed=args.seed), file=sys.stderr)
        report = export(model, args.output, batch=args.batch, dynamic_batch=not args.static_batch, opset=args.opset,
                        overwrite=args.overwrite)
    except _user_errors() + (ExportError,) as exc:
        return _fail("export", exc)
    print(f"{report} [weights: {source}]")
    return EXIT_OK


def verify_main(args):
    from . import verify
    from .load import check_device

    config = {k: getattr(args, k) for k in CONFIG_INTS + CONFIG_NUMBERS + ("tie_break",)
              if getattr(args, k) is not None}
    arch = args.arch
    try:
        check_device(args.device, "--device")
        if arch is None and args.checkpoint is None:
            arch = "mhformer"
            config.setdefault("frames", 81)  # verify's own default: a quick check, not MHFormer-351
        rows, meta = verify.run(arch=arch, checkpoint=args.checkpoint, backend=args.backend,
                                dtype=DTYPES[args.dtype], device=args.device, batch=args.batch, seed=args.seed,
                                **config)
    except _user_errors() as exc:
        return _fail("verify", exc)
    print(verify.format_table(rows, meta))
    return EXIT_OK if all(r.ok for r in rows) else EXIT_CHECK_FAILED


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
    parser = _Parser(prog="pyengine bench", epilog=EPILOG)
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


class UsageError(ValueError):
    pass


def _output_paths(inputs, output, overwrite):
    """One output .npz path per input (see -o's help), refusing what would lose data: an existing output without
    --overwrite, an output that is one of the inputs, two inputs writing one file, an -o that is neither."""
    suffix = os.path.splitext(output.rstrip(os.sep))[1].lower()
    if os.path.isdir(output):
        as_dir = True
    elif os.path.exists(output) and len(inputs) > 1:
        raise UsageError(f"-o {output}: several inputs need an output directory, but {output!r} is a file")
    elif suffix == ".npz":
        if len(inputs) > 1:
            raise UsageError(f"-o {output}: {len(inputs)} inputs need an output directory, got a .npz file name")
        as_dir = False
    elif suffix:
        raise UsageError(f"-o {output}: expected an output .npz file or a directory, got a file name ending in "
                         f"{suffix!r}")
    else:
        as_dir = True
    if as_dir:
        names = [os.path.splitext(os.path.basename(p))[0] + ".npz" for p in inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"-o {output}: several inputs would write the same output file(s) {dupes}; rename "
                             f"them or lift them separately")
        paths = [os.path.join(output, n) for n in names]
    else:
        paths = [output]
    _check_writable(paths, "-o", overwrite)
    ins = {os.path.realpath(p) for p in inputs}
    for path in paths:
        if os.path.realpath(path) in ins:
            raise UsageError(f"-o {output}: the output {path!r} is one of the inputs; choose another -o")
    return paths


def _check_writable(paths, option, overwrite):
    """Every output path can be written: not an existing directory, not an existing file without --overwrite, and
    its directory exists or can be created (no path component is a file)."""
    existing = [p for p in paths if os.path.lexists(p)]
    for p in existing:
        if os.path.isdir(p):
            raise UsageError(f"{option} {p}: is a directory, expected an output file name")
    if existing and not overwrite:
        raise UsageError(f"{option}: {len(existing)} output file(s) exist, first {existing[0]!r}; pass --overwrite "
                         f"to replace them (nothing was written)")
    for p in paths:
        parent = os.path.dirname(os.path.abspath(p))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise UsageError(f"{option} {p}: cannot create its directory, {parent!r} is a file")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"{option} {p}: the directory {parent!r} is not writable")


def _input_format(path, fmt):
    return fmt or os.path.splitext(path)[1].lower().lstrip(".")


def _check_lift_args(args):
    """Every argument check that needs no model and no lifting, so a bad one fails before anything runs."""
    if (args.checkpoint is None) == (not args.random_weights):
        raise UsageError("give exactly one of --checkpoint PATH (real weights) or --random-weights (a demo with "
                         "meaningless output)")
    if args.checkpoint is not None and args.seed is not None:
        raise UsageError(f"--seed {args.seed}: applies to --random-weights only, not to --checkpoint")
    args.seed = 0 if args.seed is None else args.seed
    if args.normalized and (args.width is not None or args.height is not None):
        raise UsageError(f"--normalized contradicts --width {args.width} / --height {args.height}: normalised "
                         f"keypoints have no image size")
    if (args.width is None) != (args.height is None):
        raise UsageError(f"give both --width and --height or neither, got --width {args.width}, --height "
                         f"{args.height}")
    for path in args.inputs:  # every rank checks every input, so all fail alike on a typo
        if os.path.isdir(path):
            raise UsageError(f"input {path!r}: is a directory, expected a keypoint file")
        if not os.path.isfile(path):
            raise UsageError(f"input {path!r}: no such file")
    formats = {path: _input_format(path, args.format) for path in args.inputs}
    vp3d = {k: getattr(args, k) for k in ("subject", "action", "camera") if getattr(args, k) is not None}
    if vp3d:
        other = [p for p, f in formats.items() if f != "npz"]
        if other:
            raise UsageError(f"--{' --'.join(vp3d)} apply to VideoPose3D .npz inputs only, got {other[0]!r} "
                             f"({formats[other[0]]})")
    if args.multi_person:
        other = [p for p, f in formats.items() if f != "json"]
        if other:
            raise UsageError(f"--multi-person: applies to MMPose .json input only, got {other[0]!r} "
                             f"({formats[other[0]]})")
    tracking = [flag for key, flag in TRACK_OPTIONS.items() if getattr(args, key) is not None]
    if tracking and args.single_person:
        raise UsageError(f"{' '.join(tracking)}: track several people, which --single-person turns off")
    if args.layout is not None:
        json_inputs = [p for p, f in formats.items() if f == "json"]
        if json_inputs:
            raise UsageError(f"--layout {args.layout}: does not apply to MMPose .json input {json_inputs[0]!r} "
                             f"(always COCO-17)")
    if args.checkpoint is not None:
        if os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: is a directory, expected a checkpoint file")
        if not os.path.isfile(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
    outputs = _output_paths(args.inputs, args.output, args.overwrite)
    if args.render:
        if len(args.inputs) != 1:
            raise UsageError(f"--render works with a single input file, got {len(args.inputs)} inputs")
        from .render import check_output
        check_output(args.render)
        _check_writable([args.render], "--render", args.overwrite)
        if os.path.realpath(args.render) in {os.path.realpath(p) for p in outputs + list(args.inputs)}:
            raise UsageError(f"--render {args.render}: is also an input or the -o output")
    return outputs


def _build_model(args, device):
    """``(model, source)`` from --checkpoint or --random-weights."""
    import inspect

    from . import arch as archs
    from .load import load
    from .testing import randomize_

    config = {k: getattr(args, k) for k in CONFIG_INTS + CONFIG_NUMBERS + ("tie_break",)
              if getattr(args, k) is not None}
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
    module = randomize_(archs.construct(arch, kwargs, given=set(config)), args.seed)
    return load(module, backend=args.backend, dtype=dtype, device=device), f"random weights (seed {args.seed})"


def _read_one(args, path):
    """Read and prepare one input (every check of the data): ``(keypoints [T, 17, 2], confidence [T, 17] or None,
    Keypoints2D)``, or ``(None, None, Tracks)`` for several people (an MMPose .json with several instances in a
    frame or several track_ids, or --multi-person)."""
    from .keypoints import DEFAULT_SCORE_THRESHOLD, load_keypoints, read_detections

    threshold = DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    tracking = {key: getattr(args, key) for key in TRACK_OPTIONS if getattr(args, key) is not None}
    if _input_format(path, args.format) == "json" and not args.single_person:
        det = read_detections(path, format=args.format)
        if args.multi_person or det.several_people:
            from .tracks import build_tracks
            if args.score_threshold is not None and not det.has_scores:
                raise UsageError(f"--score-threshold {args.score_threshold:g}: {det.source} has no keypoint scores")
            if "min_oks" in tracking and det.track_id is not None:
                raise UsageError(f"--min-oks {args.min_oks:g}: {det.source} has track_id on every instance, so no "
                                 f"assignment (and no OKS gate) is used")
            tracks = build_tracks(det, width=args.width, height=args.height, normalized=args.normalized or None,
                                  score_threshold=threshold, interpolate=args.interpolate, **tracking)
            if not tracks.segments:
                raise UsageError(" ".join(tracks.summary()) + "; nothing to lift (lower --min-track-length?)")
            return None, None, tracks
    if tracking:
        flags = " ".join(TRACK_OPTIONS[k] for k in tracking)
        raise UsageError(f"{flags}: apply to several people per frame; {path} has one person per frame (pass "
                         f"--multi-person to track it anyway)")
    kp, confidence, raw = load_keypoints(
        path, width=args.width, height=args.height, normalized=args.normalized or None, score_threshold=threshold,
        interpolate=args.interpolate, format=args.format, layout=args.layout, subject=args.subject,
        action=args.action, camera=args.camera, return_confidence=True)
    if args.score_threshold is not None and raw.scores is None:
        raise UsageError(f"--score-threshold {args.score_threshold:g}: {raw.source} has no keypoint scores")
    return kp, confidence, raw


def _partial(path):
    """A temporary name beside ``path`` with the same extension (renamed over ``path`` once complete)."""
    head, tail = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(tail)
    return os.path.join(head, f".{stem}.partial-{os.getpid()}{ext}")


def _write_atomic(out_path, arrays, render_fn, render_path):
    """Write ``arrays`` to ``out_path`` (.npz) and, when ``render_path``, ``render_fn(tmp)``: each to a temporary
    name first, renamed only once everything is complete."""
    import numpy as np

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    written = []  # (partial, final)
    try:
        tmp = _partial(out_path)
        np.savez(tmp, **arrays)
        written.append((tmp, out_path))
        if render_path:
            os.makedirs(os.path.dirname(os.path.abspath(render_path)), exist_ok=True)  # checked creatable up front
            tmp = _partial(render_path)
            render_fn(tmp)
            written.append((tmp, render_path))
        for tmp, final in written:
            os.replace(tmp, final)
    finally:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.remove(tmp)


def _print_notes(notes):
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
        print(f"note: {note}")


def _common_arrays(model, args, random_weights, source, fps, notes=()):
    import numpy as np

    from .skeleton import JOINT_NAMES, PARENTS
    info = model.pyengine
    return dict(joint_names=np.array(JOINT_NAMES), parents=np.array(PARENTS, dtype=np.int64),
                arch=np.array(info.arch), config=np.array(json.dumps(info.config, default=str)),
                backend=np.array(info.backend), flip=np.array(args.flip), random_weights=np.array(random_weights),
                source=np.array(source), fps=np.array(np.nan if fps is None else fps),
                notes=np.array(json.dumps(list(notes))))


def _lift_tracks_one(model, args, tracks, out_path, random_weights):
    """Several people: ``lift_tracks`` and the multi-person .npz (docs/lifting.md), written atomically."""
    import numpy as np

    from .lift import lift_tracks

    for line in tracks.summary():
        print(line)
    start = time.perf_counter()
    with warnings.catch_warnings():  # its notes are printed below and saved in the .npz
        warnings.simplefilter("ignore", UserWarning)
        res = lift_tracks(model, tracks, flip=args.flip, batch_size=args.batch_size, progress=args.progress)
    seconds = time.perf_counter() - start
    _print_notes(res.notes)
    info = model.pyengine
    tracking = dict(method=tracks.method, **tracks.params, skipped=tracks.skipped,
                    skipped_instances=tracks.skipped_instances,
                    segments=[dict(track_id=s.track_id, first_frame=int(tracks.frame_ids[s.start]),
                                   last_frame=int(tracks.frame_ids[s.stop - 1]), first_row=r)
                              for s, r in zip(tracks.segments, res.first_rows)])
    arrays = dict(positions_3d=res.positions_3d, keypoints_2d=res.keypoints_2d, valid=res.valid,
                  detected=res.detected, track_ids=res.track_ids, frame_ids=res.frame_ids.astype(np.int64),
                  multi_person=np.array(True), tracking=np.array(json.dumps(tracking)),
                  **({} if res.confidence is None else dict(confidence=res.confidence)),
                  **_common_arrays(model, args, random_weights, tracks.source, tracks.fps, res.notes))
    fps = args.render_fps or tracks.fps or 25.0

    def draw(tmp):
        from .render import render_tracks
        title = f"{info.arch}, {len(res.track_ids)} tracks" + (" - RANDOM WEIGHTS" if random_weights else "")
        render_tracks(tmp, res.keypoints_2d, res.positions_3d, res.valid, res.track_ids, fps=fps,
                      every=args.render_every, title=title, progress=args.progress)
    _write_atomic(out_path, arrays, draw, args.render)
    poses = int(res.valid.sum())
    print(f"lifted {len(res.track_ids)} tracks ({poses} poses in {len(res.frame_ids)} frames): {tracks.source} -> "
          f"{out_path} ({seconds:.1f} s, {poses / seconds:.1f} poses/s, flip {'on' if args.flip else 'off'})")
    if args.render:
        origin = "--render-fps" if args.render_fps else "the input's" if tracks.fps else "default"
        print(f"rendered {args.render} ({fps:g} fps, {origin})")
    return res


def _lift_one(model, args, kp, confidence, raw, out_path, random_weights):
    """Lift one prepared input and write its .npz (and --render) atomically: complete files or none."""
    import numpy as np

    from .lift import NO_SCORES_NOTE, input_channels, lift

    if kp is None:
        return _lift_tracks_one(model, args, raw, out_path, random_weights)
    notes, extra = [], {}
    if input_channels(model) == 3:  # x, y, confidence (MotionBERT); filled keypoints have confidence 0
        if confidence is None:
            notes.append(NO_SCORES_NOTE.format(source=raw.source, arch=model.pyengine.arch))
            confidence = np.ones(kp.shape[:2], dtype=np.float32)
        extra = dict(confidence=confidence)
    _print_notes(notes)
    start = time.perf_counter()
    pos = lift(model, kp, flip=args.flip, batch_size=args.batch_size, progress=args.progress,
               confidence=extra.get("confidence"))
    seconds = time.perf_counter() - start
    info = model.pyengine
    fps = args.render_fps or raw.fps or 25.0
    title = f"{info.arch}" + (" - RANDOM WEIGHTS" if random_weights else "")

    def render_fn(tmp):
        from .render import render
        render(tmp, kp, pos, fps=fps, every=args.render_every, title=title, progress=args.progress)

    arrays = dict(positions_3d=pos, keypoints_2d=kp, frame_ids=np.asarray(raw.frame_ids, dtype=np.int64), **extra,
                  **_common_arrays(model, args, random_weights, raw.source, raw.fps, notes))
    _write_atomic(out_path, arrays, render_fn, args.render)
    print(f"lifted {len(pos)} frames: {raw.source} -> {out_path} ({seconds:.1f} s, {len(pos) / seconds:.1f} "
          f"frames/s, flip {'on' if args.flip else 'off'})")
    if args.render:
        origin = "--render-fps" if args.render_fps else "the input's" if raw.fps else "default"
        print(f"rendered {args.render} ({fps:g} fps, {origin})")
    return pos


def lift_main(args):
    from . import distributed
    from .load import check_device

    ctx, code, device = None, EXIT_OK, None
    try:
        outputs = _check_lift_args(args)
        ctx = distributed.from_env()
        device = args.device or distributed.default_device(ctx)
        check_device(device, "--device")
        distributed.init(ctx, device)
        model, source = _build_model(args, device)
        mine = distributed.shard(zip(args.inputs, outputs), ctx)
        # Read and check all of this rank's inputs before lifting or writing anything.
        prepared = [(*_read_one(args, path), out_path) for path, out_path in mine]
    except _user_errors() as exc:
        code = _fail("lift", exc)
    if ctx is not None and ctx.distributed:  # a rank that failed stops every rank before anything is written
        worst = distributed.worst_exit_code(code, ctx, device)
        if worst != code:
            print("pyengine lift: error: another rank failed (see its message); nothing was written",
                  file=sys.stderr)
        code = worst
    if code == EXIT_OK:
        try:
            if args.random_weights:
                print(RANDOM_BANNER.format(seed=args.seed), file=sys.stderr)
                print(RANDOM_BANNER.format(seed=args.seed))
            if ctx.rank == 0:
                from .verify import kernels_that_ran
                info = model.pyengine
                ran = kernels_that_ran(model)["(whole model output)"]  # what runs, not just the requested backend
                print(f"model: {info.arch} ({', '.join(f'{k}={v}' for k, v in info.config.items())}); weights: "
                      f"{source}; backend {info.backend} (kernels {ran}); {args.dtype} on {device}"
                      + (f"; {ctx.world_size} ranks" if ctx.distributed else ""))
            for kp, confidence, raw, out_path in prepared:
                _lift_one(model, args, kp, confidence, raw, out_path, args.random_weights)
        except _user_errors() as exc:
            code = _fail("lift", exc)
    if ctx is not None and ctx.distributed:
        code = distributed.agree_exit_code(code, ctx, device)
    return code


if __name__ == "__main__":
    sys.exit(main())
