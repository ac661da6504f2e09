"""Submit one add_sub job, wait for it, print its outputs.

GPUFLEET_URL=http://127.0.0.1:8080 GPUFLEET_API_KEY=gf_... python examples/submit_and_wait.py
"""

import os

import numpy as np
from gpufleet import Client, JobFailedError


def main() -> None:
    with Client(os.environ["GPUFLEET_URL"], api_key=os.environ["GPUFLEET_API_KEY"]) as fleet:
        a = np.array([[1, 2, 3, 4]], dtype=np.float32)
        b = np.array([[4, 3, 2, 1]], dtype=np.float32)
        job = fleet.submit("add_sub", {"INPUT0": a, "INPUT1": b}, tags={"example": "submit"})
        print(f"submitted {job.id} ({job.status})")
        done = fleet.wait(job.id, timeout=120)
        print(f"{done.id} {done.status} queue_ms={done.queue_ms} run_ms={done.run_ms}")
        try:
            outputs = fleet.outputs(done)
        except JobFailedError as exc:
            raise SystemExit(f"job failed: {exc}") from exc
        for name, value in outputs.items():
            print(name, value.tolist())


if __name__ == "__main__":
    main()
