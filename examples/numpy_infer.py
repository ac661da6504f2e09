"""Synchronous-style inference with numpy arrays: submit, wait and decode in one call.

GPUFLEET_URL=... GPUFLEET_API_KEY=... python examples/numpy_infer.py
"""

import os

import numpy as np
from gpufleet import Client


def main() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4)).astype(np.float32)  # a batch of 4 rows
    b = rng.standard_normal((4, 4)).astype(np.float32)
    with Client(os.environ["GPUFLEET_URL"], api_key=os.environ["GPUFLEET_API_KEY"]) as fleet:
        out = fleet.infer("add_sub", {"INPUT0": a, "INPUT1": b}, timeout=120)
    np.testing.assert_allclose(out["OUTPUT0"], a + b, rtol=1e-6)
    np.testing.assert_allclose(out["OUTPUT1"], a - b, rtol=1e-6)
    print("OUTPUT0", out["OUTPUT0"].dtype, out["OUTPUT0"].shape, "ok")
    print("OUTPUT1", out["OUTPUT1"].dtype, out["OUTPUT1"].shape, "ok")


if __name__ == "__main__":
    main()
