"""Drop-in ``nn.Module``s backed by pyengine's fused kernels. Each subclasses its eager reference in
``pyengine.models`` (same constructor, published parameter names, same outputs), so the published state_dicts
load into it directly, and takes ``backend=`` ("auto", "triton", "cuda", "cpp", "reference")."""
from .layers import Block, CrossAttention
from .mhformer import CHIBlock, MHFormer, MHGEncoder, SHRBlock, TPCMHFormer
from .mixste import HoTMixSTE, MixSTE, TPCMixSTE
from .motionbert import HoTMotionBERT, MotionBERT
from .susa import HSUSA, HWSUSA, WSUSA, PXShuffleUnit, SXShuffleUnit

__all__ = ["Block", "CrossAttention", "MHGEncoder", "SHRBlock", "CHIBlock", "MHFormer", "TPCMHFormer", "MixSTE",
           "TPCMixSTE", "HoTMixSTE", "MotionBERT", "HoTMotionBERT",
           "HSUSA", "WSUSA", "HWSUSA", "SXShuffleUnit", "PXShuffleUnit"]
