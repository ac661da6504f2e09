"""The soak (``make soak``): many jobs through the real fleet while it is being broken; a
table per store, and exit 1 when any job did not end as docs/failure_modes.md says.

Per store (the embedded SQLite store; DynamoDB + S3 on a moto server process): 10,000 jobs
in batches of 100 (each with an Idempotency-Key, resent with it on failure), 3 mock runners
answering each job with its own inputs after 0.2 s, plus one runner with the real CPU Triton
when a Docker engine and the image are there (``--no-triton`` to leave it out); a mock
runner SIGKILLed every 5 s and started again, the control plane killed -9 and restarted
twice, the store paused 15 s once. What is checked: tests/helpers/soak.py.

    .venv/bin/python bench/soak.py                      # both stores, 10,000 jobs each
    .venv/bin/python bench/soak.py --jobs 1000 --stores sqlite
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import rig
from tests.helpers.soak import SoakConfig, SoakReport, run_soak, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--stores", default="sqlite,dynamodb", help="comma-separated")
    ap.add_argument("--runners", type=int, default=3, help="mock runners")
    ap.add_argument("--no-triton", action="store_true", help="no runner with the CPU Triton")
    ap.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs")
    ap.add_argument("--cp-kills", type=int, default=2)
    ap.add_argument("--pause", type=float, default=15.0, help="seconds the store is paused")
    ap.add_argument("--submit-over", type=float, default=None, help="seconds (default jobs/50)")
    ap.add_argument("--deadline", type=float, default=3600.0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp)")
    args = ap.parse_args()

    docker_host = os.environ.get("DOCKER_HOST")
    triton = (
        not args.no_triton
        and docker_host is not None
        and rig.engine_reachable(docker_host)
        and rig.image_present(docker_host)
    )
    if not args.no_triton and not triton:
        print("no Docker engine with the Triton CPU image (DOCKER_HOST): mock runners only")
    reports: list[SoakReport] = []
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"gpufleet-soak-{store}-") as tmp:
            cfg = SoakConfig(
                workdir=args.workdir / store if args.workdir else Path(tmp),
                jobs=args.jobs,
                store=store,
                mock_runners=args.runners,
                triton_runner=triton,
                docker_host=docker_host,
                kill_every_s=args.kill_every,
                cp_kills=args.cp_kills,
                store_pause_s=args.pause,
                submit_over_s=args.submit_over or max(10.0, args.jobs / 50),
                deadline_s=args.deadline,
            )
            report = run_soak(cfg)
            reports.append(report)
            for problem in report.problems[:50]:
                print(f"[soak {store}] PROBLEM: {problem}")
            print(
                f"[soak {store}] jobs run by Triton: {report.by_triton}; commit lines per job "
                f"{dict(report.commits_logged)}"
            )
    print()
    print(table(reports))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
