"""Latency mode: fixed-shape inference calls on CUDA replay a captured CUDA graph.

``GraphedForward`` replaces ``model.forward`` (``pyengine.load(..., cuda_graphs=True)``, the default on CUDA).
Each input *signature* — shape, dtype and device of ``x``, the keyword tensors' shapes and dtypes, and whether
``torch.inference_mode`` is on (tensors made under it cannot be updated in place outside it) — is run eagerly
twice on a side stream (Triton compiles, configurations are fixed), then captured; later calls copy the input
into the graph's static buffers and replay.

Rules that keep replay correct:

* **Weights**: a graph bakes in the memory of every parameter, buffer and derived weight cache (stacked or
  BatchNorm-folded weights). Each entry remembers the model's tensor state (``data_ptr``, ``_version``, dtype,
  device of every parameter and buffer); a ``load_state_dict``, an in-place update or a ``.to()`` changes it,
  and the entry is dropped and captured anew, so a replay never reads stale or freed weights.
* **When it steps aside** (runs the eager forward): grad mode (training needs autograd), an input not on the
  capturer's device type, extra positional arguments, keyword tensors on another device, under
  ``torch.compile`` tracing, and while another CUDA-graph capture is running on the current stream.
* **Capture failure** (an op that cannot be captured): warned once, recorded in ``failures`` (``report()``
  shows it) and that signature runs eagerly from then on — never retried on every call.
* **Devices**: capture and replay run under ``torch.cuda.device(x.device)``, with a stream made on that device
  (a model on ``cuda:1`` works without ``torch.cuda.set_device``).

The capture itself is behind a small interface (``CudaGraphCapturer``) so the signature, weight-state and
fallback logic is tested on CPU with a fake capturer (``tests/engine/test_cuda_graphs.py``).
"""
import warnings

import torch


class CudaGraphCapturer:
    """The real capture: ``torch.cuda.CUDAGraph`` on a side stream of the input's device."""

    device_type = "cuda"

    def device_guard(self, device):
        return torch.cuda.device(device)

    def capturing(self) -> bool:
        """True while some CUDA-graph capture runs on the current stream (ours must not nest in it)."""
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()

    def capture(self, fn, device):
        """Warm ``fn()`` up twice on a side stream, then capture it; returns ``(replay, static_outputs)``."""
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: Triton compiles and launch configurations are fixed before capture
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph.replay, out


def tensor_state(t: torch.Tensor):
    """What identifies a tensor's contents without reading them: data pointer, in-place version, dtype, device.
    Inference tensors (made under ``torch.inference_mode``) keep no version counter: ``None`` marks them."""
    return (t.data_ptr(), None if t.is_inference() else t._version, t.dtype, t.device)


def _model_state(model):
    return tuple(tensor_state(t) for t in (*model.parameters(), *model.buffers()))


def _clone(out):
    return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


class GraphedForward:
    """``model.forward`` in latency mode; see the module docstring. ``graphs``: signature -> entry;
    ``failures``: signature -> the capture error (that signature runs eagerly)."""

    def __init__(self, model, eager_forward, capturer=None):
        self.model, self.eager = model, eager_forward
        self.capturer = capturer or CudaGraphCapturer()
        self.graphs, self.failures = {}, {}
        self.captures = 0  # how many graphs were captured (recaptures included), for report() and tests

    def _steps_aside(self, x, args, kwargs) -> bool:
        if args or not isinstance(x, torch.Tensor) or x.device.type != self.capturer.device_type:
            return True
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or self.capturer.capturing():
            return True
        return any(isinstance(v, torch.Tensor) and v.device != x.device for v in kwargs.values())

    def __call__(self, x, *args, **kwargs):
        if self._steps_aside(x, args, kwargs):
            return self.eager(x, *args, **kwargs)
        key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled(),
               tuple(sorted((k, (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v)
                            for k, v in kwargs.items())))
        if key in self.failures:
            return self.eager(x, **kwargs)
        state = _model_state(self.model)
        entry = self.graphs.get(key)
        if entry is not None and entry["state"] != state:  # new / updated / moved weights: never replay stale
            del self.graphs[key]
            entry = None
        if entry is None:
            try:
                entry = self._capture(x, kwargs, state)
            except Exception as exc:  # noqa: BLE001 - any capture failure: this signature runs eagerly
                self.failures[key] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"pyengine: CUDA-graph capture failed for input {list(x.shape)} {x.dtype} "
                              f"({type(exc).__name__}: {exc}); this input signature runs eagerly from now on "
                              "(model.report() lists it; pyengine.load(..., cuda_graphs=False) turns graphs off)",
                              RuntimeWarning, stacklevel=2)
                return self.eager(x, **kwargs)
            self.graphs[key] = entry
        with self.capturer.device_guard(x.device):
            entry["x"].copy_(x)
            for k, v in kwargs.items():
                if isinstance(v, torch.Tensor):
                    entry["kw"][k].copy_(v)
            entry["replay"]()
            return _clone(entry["out"])

    def _capture(self, x, kwargs, state):
        with self.capturer.device_guard(x.device):
            static_x = x.clone()
            static_kw = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            replay, out = self.capturer.capture(lambda: self.eager(static_x, **static_kw), x.device)
        self.captures += 1
        # the state after the warm-up: building weight caches does not change parameters, so this equals ``state``
        return {"replay": replay, "out": out, "x": static_x, "kw": static_kw, "state": state}


def enable_cuda_graphs(model, capturer=None):
    """Latency mode (``pyengine.load(..., cuda_graphs=True)``, the default on CUDA)."""
    if not isinstance(model.forward, GraphedForward):
        model.forward = GraphedForward(model, model.forward, capturer)
    return model


def graph_status(model):
    """One line for ``report()``: captured signatures and capture failures, or None without latency mode."""
    fwd = getattr(model, "forward", None)
    if not isinstance(fwd, GraphedForward):
        return None
    text = f"{len(fwd.graphs)} input signature(s) captured ({fwd.captures} capture(s) in all)"
    if fwd.failures:
        text += "; capture FAILED (runs eagerly) for: " + "; ".join(
            f"{list(k[0])} {str(k[1]).replace('torch.', '')}: {why}" for k, why in fwd.failures.items())
    return text


__all__ = ["CudaGraphCapturer", "GraphedForward", "enable_cuda_graphs", "graph_status"]
