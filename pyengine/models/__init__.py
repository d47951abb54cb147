"""Eager reference models: plain PyTorch, published parameter names, every hyperparameter an argument."""
from .mhformer import CHIBlock, MHFormer, MHGEncoder, SHRBlock, TPCMHFormer
from .mixste import HoTMixSTE, MixSTE, TPCMixSTE
from .motionbert import HoTMotionBERT, MotionBERT
from .susa import HSUSA, HWSUSA, WSUSA, PXShuffleUnit, SXShuffleUnit, channel_shuffle
from .tpc import dpc_knn_select, pairwise_distance

__all__ = [
    "MHFormer", "TPCMHFormer", "MHGEncoder", "SHRBlock", "CHIBlock", "MixSTE", "TPCMixSTE", "HoTMixSTE",
    "MotionBERT", "HoTMotionBERT",
    "HSUSA", "WSUSA", "HWSUSA", "SXShuffleUnit", "PXShuffleUnit", "channel_shuffle",
    "dpc_knn_select", "pairwise_distance",
]
