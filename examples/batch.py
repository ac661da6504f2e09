"""Submit a batch of jobs in one call and collect every result.

GPUFLEET_URL=... GPUFLEET_API_KEY=... python examples/batch.py
"""

import os

import numpy as np
from gpufleet import Client


def main(count: int = 10) -> None:
    with Client(os.environ["GPUFLEET_URL"], api_key=os.environ["GPUFLEET_API_KEY"]) as fleet:
        jobs = [
            {
                "model": "add_sub",
                "inputs": {
                    "INPUT0": np.full((1, 4), i, dtype=np.float32),
                    "INPUT1": np.ones((1, 4), dtype=np.float32),
                },
                "tags": {"example": "batch"},
            }
            for i in range(count)
        ]
        ids = fleet.submit_batch(jobs)
        print(f"submitted {len(ids)} jobs")
        for i, job_id in enumerate(ids):
            out = fleet.outputs(fleet.wait(job_id, timeout=120))
            assert out["OUTPUT0"].tolist() == [[i + 1.0] * 4]
        print(f"all {len(ids)} jobs succeeded")


if __name__ == "__main__":
    main()
