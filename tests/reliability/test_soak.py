"""The short soak (tests/helpers/soak.py): 1,000 jobs through the real control plane
on the embedded store and two mock runners, while a runner is SIGKILLed every 5 s, the
control plane is killed -9 once and the store stalls once. Every job must end as
docs/failure_modes.md says: terminal, its own outputs, within max_attempts, committed once,
no request hung past the storage deadlines, no index item left behind.

The long soak (10,000 jobs, both stores, a Triton runner) is ``make soak`` (bench/soak.py);
``GPUFLEET_SOAK_JOBS=N`` runs this test with N jobs instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.soak import SoakConfig, run_soak, table

pytestmark = [pytest.mark.slow]


def test_short_soak_every_job_ends_once(tmp_path: Path) -> None:
    jobs = int(os.environ.get("GPUFLEET_SOAK_JOBS", "1000"))
    cfg = SoakConfig(
        workdir=tmp_path,
        jobs=jobs,
        store="sqlite",
        mock_runners=2,
        kill_every_s=5.0,
        cp_kills=1,
        store_pause_s=3.0,
        submit_over_s=max(8.0, jobs / 25),
        batch=25,
        mock_delay_s=1.0,  # jobs in flight when a runner is killed
        deadline_s=max(120.0, jobs / 5),
    )
    report = run_soak(cfg)
    print("\n" + table([report]))
    assert report.problems == [], report.problems
    assert report.runner_kills >= 2 and report.cp_kills == 1 and report.pauses == 1
    assert report.statuses["SUCCEEDED"] + report.statuses["FAILED"] == jobs
    assert report.commits_stored == {1: jobs}, report.commits_stored  # the store's records
    # The commit lines were counted (a kill -9 may take the line of a commit with it).
    assert report.commits_logged[1] >= jobs * 0.9, report.commits_logged
