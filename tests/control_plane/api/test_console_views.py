"""Pure pieces of the console: the job timeline, previews, the try-it form's parsing, and the
stylesheet's colour contrast (WCAG AA: 4.5:1 for text) in the light and the dark theme."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gpufleet.wire import JobList, JobView, ModelVersionView, Tensor, TensorSpec

from control_plane.api.console import views
from control_plane.api.console.render import STATIC_DIR, age
from control_plane.errors import InvalidRequest

ADD_SUB = ModelVersionView(
    name="add_sub",
    version="1",
    state="READY",
    created_at="2026-01-01T00:00:00.000Z",
    inputs=[TensorSpec(name="INPUT0", datatype="FP32", shape=[-1, 4])],
)


def test_timeline_of_a_finished_job() -> None:
    job = JobView(
        id="job_1",
        status="SUCCEEDED",
        model="m",
        created_at="2026-01-01T00:00:00.000Z",
        started_at="2026-01-01T00:00:01.000Z",
        finished_at="2026-01-01T00:00:02.000Z",
        queue_ms=1000,
        run_ms=1000,
        runner_id="run_x",
    )
    steps = views.timeline(job)
    assert [s.name for s in steps] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert steps[1].note == "runner run_x · waited 1000 ms" and steps[2].note == "ran 1000 ms"


def test_timeline_of_a_job_cancelled_in_the_queue() -> None:
    job = JobView(id="j", status="CANCELLED", model="m", created_at="2026-01-01T00:00:00Z")
    assert [s.name for s in views.timeline(job)] == ["QUEUED", "CANCELLED"]


def test_preview_cuts_long_tensors() -> None:
    t = Tensor(name="o", datatype="FP32", shape=[1, 40], data=list(range(40)))
    assert views.preview(t).endswith(", 31, …]")
    small = Tensor(name="o", datatype="FP32", shape=[2, 2], data=[[1, 2], [3, 4]])
    assert views.preview(small) == "[1, 2, 3, 4]"


def test_try_it_form_shapes_from_the_array_and_names_bad_fields() -> None:
    (t,) = views.tensors_from_form(ADD_SUB, {"input:INPUT0": "[[1, 2, 3, 4], [5, 6, 7, 8]]"})
    assert t.shape == [2, 4] and t.data == [1, 2, 3, 4, 5, 6, 7, 8]
    assert views.example_value(ADD_SUB.inputs[0]) == "[[0, 0, 0, 0]]"
    for raw, message in (
        ("", "enter a JSON array"),
        ("[1,", "not a JSON array"),
        ("7", "not a single"),
    ):
        with pytest.raises(InvalidRequest, match=message) as exc:
            views.tensors_from_form(ADD_SUB, {"input:INPUT0": raw})
        assert exc.value.field == "input:INPUT0"


def test_time_filter_keeps_the_window_and_stops_paging_past_it() -> None:
    def job(i: int, at: str) -> JobView:
        return JobView(id=f"j{i}", status="QUEUED", model="m", created_at=at)

    now = 1767225600.0  # 2026-01-01T00:00:00Z
    recent = [job(1, "2025-12-31T23:59:00Z"), job(2, "2025-12-31T23:50:00Z")]
    full = JobList(jobs=recent, next_cursor="c1")
    assert views.created_since(full, "15m", now) == (recent, "c1")
    assert views.created_since(full, "", now) == (recent, "c1")
    mixed = JobList(jobs=[*recent, job(3, "2025-12-31T20:00:00Z")], next_cursor="c2")
    assert views.created_since(mixed, "1h", now) == (recent, None)  # older ones: stop
    assert views.created_since(mixed, "24h", now) == (mixed.jobs, "c2")


def test_age_reads_like_a_person_would() -> None:
    assert age(None) == "never"
    assert age("2026-01-01T00:00:00Z", now=1767225600 + 5) == "5s ago"
    assert age("2026-01-01T00:00:00Z", now=1767225600 + 600) == "10m ago"


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))

    def f(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b)


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_in_both_themes() -> None:
    css = Path(STATIC_DIR / "console.css").read_text()
    themes = re.findall(r":root\s*{([^}]*)}", css)
    assert len(themes) == 2  # light, then dark inside prefers-color-scheme
    for block in themes:
        colours = dict(re.findall(r"--(\w+):\s*(#[0-9a-fA-F]{6})", block))
        for text in ("fg", "muted", "accent", "ok", "warn", "bad"):
            for ground in ("bg", "card"):
                ratio = _contrast(colours[text], colours[ground])
                assert ratio >= 4.5, (text, ground, round(ratio, 2))
        for button in ("accent", "bad"):  # button text is the page background colour
            assert _contrast(colours["bg"], colours[button]) >= 4.5, button
