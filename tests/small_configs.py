"""Small configurations of the architectures and the forward call, shared by the engine tests (tests/engine/,
tests/gpu/): fast on 2 CPU cores, the published frame counts where they matter (MHFormer-81's strided MHG), every
structural branch present."""
import pyengine

# The MHFormer / MixSTE family (the engine tests parametrise over exactly these)
TRANSFORMERS = {
    "mhformer": dict(frames=27, channel=32, d_hid=48, layers=3),
    "mhformer81": dict(frames=81, channel=16, d_hid=32, layers=2),
    "tpc_mhformer": dict(frames=27, channel=32, d_hid=48, layers=3, token_num=9, layer_index=1),
    "mixste": dict(frames=9, channel=32, depth=2, heads=4),
    "tpc_mixste": dict(frames=9, channel=32, depth=2, heads=4, token_num=3, layer_index=1),
    "hot_mixste": dict(frames=9, channel=32, depth=2, heads=4, token_num=5, layer_index=1),
}
# Every fused architecture: the above, MotionBERT (and HoT) and the SUSA family
SMALL = {
    **TRANSFORMERS,
    "motionbert": dict(dim_feat=32, dim_rep=24, depth=2, num_heads=4, mlp_ratio=2, maxlen=9),
    "hot_motionbert": dict(dim_feat=32, dim_rep=24, depth=2, num_heads=4, mlp_ratio=2, maxlen=9, token_num=5,
                           layer_index=1),
    "hsusa": dict(channels=8),
    "hwsusa": dict(channels=8, mode="hw", ln_enable=True, hw_shuffle=True),
    "sx_shuffle_unit": dict(in_channels=16, out_channels=16),
    "px_shuffle_unit": dict(in_channels=16, out_channels=16),
}


def arch_of(name):
    """The architecture of a SMALL entry ("mhformer81" is an MHFormer)."""
    return name.rstrip("0123456789") if name.startswith("mhformer") else name


def call(model, arch, x, index=None):
    """``(output, index or None)`` of one forward: the index asked for where the architecture returns it on request
    (HoT), a given token ``index`` passed on."""
    kw = {} if index is None else {"index": index}
    if pyengine.arch.SPECS[arch].returns_index_on_request:
        kw["return_index"] = True
    out = model(x, **kw)
    return out if isinstance(out, tuple) else (out, None)
