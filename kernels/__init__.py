"""Triton kernels of pyengine, installed as ``pyengine.kernels``. One op per file; each file holds the kernel,
its launcher and its ``torch.library.custom_op("pyengine::...")`` registration. (The first kernels arrive with
the MH-attention, TPC/TRA and SUSA issues.)"""
