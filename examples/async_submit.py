"""Run several inferences concurrently with the asyncio client.

GPUFLEET_URL=... GPUFLEET_API_KEY=... python examples/async_submit.py
"""

import asyncio
import os

import numpy as np
from gpufleet import AsyncClient


async def main(count: int = 8) -> None:
    url, key = os.environ["GPUFLEET_URL"], os.environ["GPUFLEET_API_KEY"]
    async with AsyncClient(url, api_key=key) as fleet:
        ones = np.ones((1, 4), dtype=np.float32)

        async def one(i: int) -> float:
            a = np.full((1, 4), i, dtype=np.float32)
            out = await fleet.infer("add_sub", {"INPUT0": a, "INPUT1": ones}, timeout=120)
            return float(out["OUTPUT0"][0, 0])

        results = await asyncio.gather(*(one(i) for i in range(count)))
        print("results", results)
        assert results == [i + 1.0 for i in range(count)]


if __name__ == "__main__":
    asyncio.run(main())
