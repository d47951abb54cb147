"""Drop-in ``nn.Module``s backed by pyengine's fused kernels. Each holds the published parameter names, so the
published state_dicts load into it directly, and takes ``backend=`` ("triton", "cuda", "cpp", "reference")."""
