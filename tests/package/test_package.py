"""The installed package: Triton kernels shipped as pyengine.kernels, data files, the compiled extension."""
import importlib.resources
import importlib.util

import pyengine


def test_kernels_and_data_ship_inside_the_package():
    assert importlib.util.find_spec("pyengine.kernels") is not None
    sample = importlib.resources.files("pyengine") / "data" / "sample_walk.npz"
    assert sample.is_file()


def test_cpp_extension_is_built_and_exports_the_kernels():
    from pyengine.backends import cpp_extension

    assert hasattr(cpp_extension(), "tpc_select_cpu")


def test_public_api():
    assert set(pyengine.ARCHS) == {"mhformer", "tpc_mhformer", "mixste", "tpc_mixste", "hot_mixste", "hsusa",
                                   "wsusa", "hwsusa", "sx_shuffle_unit", "px_shuffle_unit", "motionbert",
                                   "hot_motionbert"}
    assert callable(pyengine.load) and callable(pyengine.tpc_select) and callable(pyengine.dpc_knn_select)
