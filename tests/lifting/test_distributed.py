"""``pyengine lift`` under torchrun: files are sharded over ranks (gloo on CPU), outputs equal one process, and
all ranks agree on the exit code. The two ranks are started the way torchrun starts them: the same command with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from pyengine import cli
from pyengine.data import synth
from test_lift import one_thread  # noqa: F401  (autouse fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/<folder>/ -> repo
MODEL = ["--random-weights", "--seed", "5", "--backend", "reference", "--device", "cpu", "--arch", "mixste",
         "--frames", "8", "--channel", "16", "--depth", "2", "--heads", "2", "--no-progress"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world=2):
    """Start ``python -m pyengine lift ARGS`` once per rank with torchrun's environment; wait for all."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-m", "pyengine", "lift", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    with np.load(os.path.join(os.path.dirname(synth.__file__), "sample_walk.npz")) as s:
        kp, w, h = s["keypoints_2d"], s["width"], s["height"]
    paths = []
    for i, (a, b) in enumerate([(0, 20), (50, 63), (100, 105)]):
        paths.append(str(d / f"clip{i}.npz"))
        np.savez(paths[-1], keypoints_2d=kp[a:b], width=w, height=h)
    return paths


def test_two_gloo_ranks_equal_one_process(inputs, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["lift", *inputs, "-o", str(tmp_path / "one"), *MODEL]) == 0
    results = launch([*inputs, "-o", str(tmp_path / "two"), *MODEL])
    for code, out, err in results:
        assert code == 0, err
    # Rank 0 lifted files 0 and 2, rank 1 file 1.
    assert "clip0.npz" in results[0][1] and "clip2.npz" in results[0][1] and "clip1.npz" not in results[0][1]
    assert "clip1.npz" in results[1][1] and "2 ranks" in results[0][1]
    for i in range(3):
        one = np.load(tmp_path / "one" / f"clip{i}.npz")["positions_3d"]
        two = np.load(tmp_path / "two" / f"clip{i}.npz")["positions_3d"]
        assert one.shape == (len(np.load(inputs[i])["keypoints_2d"]), 17, 3)
        np.testing.assert_array_equal(two, one)


def test_a_bad_file_on_one_rank_fails_every_rank(inputs, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, keypoints_2d=np.zeros((5, 16, 2)), width=10, height=10)
    results = launch([inputs[0], str(bad), "-o", str(tmp_path / "out"), *MODEL])  # bad.npz is rank 1's
    assert [code for code, _, _ in results] == [2, 2]
    assert "got [5, 16, 2]" in results[1][2]
    # The ranks agree after reading their inputs: rank 0's good file is not written either.
    assert "another rank failed" in results[0][2] and not os.path.exists(tmp_path / "out" / "clip0.npz")
