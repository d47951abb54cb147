"""Triton kernels of pyengine, installed as ``pyengine.kernels``. One op per file; each file holds the kernel,
its launcher and its ``torch.library.custom_op("pyengine::...")`` registration. (The first kernels arrive with
the MH-attention, TPC/TRA and SUSA issues.)"""


def kernel_modules():
    """The kernel modules of ``pyengine.kernels`` (every public one), imported (which imports triton)."""
    import importlib
    import pkgutil

    return [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
            if not m.name.startswith("_")]
