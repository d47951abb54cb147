"""Small configurations of the architectures, shared by the engine tests (tests/engine/): fast on 2 CPU cores,
the published frame counts where they matter (MHFormer-81's strided MHG), every structural branch present."""

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
