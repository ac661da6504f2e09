"""Jinja2 templates of the console and the few filters they use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from control_plane import clock
from control_plane.api.console.session import PREFIX, Session
from control_plane.api.console.views import parse_time

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
HTMX = "vendor/htmx.org-2.0.11/htmx.min.js"
UPLOT_JS = "vendor/uplot-1.6.32/uPlot.iife.min.js"
UPLOT_CSS = "vendor/uplot-1.6.32/uPlot.min.css"

templates = Jinja2Templates(directory=str(HERE / "templates"))


def age(value: str | None, now: float | None = None) -> str:
    """``"3s ago"`` / ``"5m ago"`` for an RFC 3339 time; ``"never"`` for None."""
    ts = parse_time(value)
    if ts is None:
        return "never"
    s = max(0.0, (now if now is not None else clock.now()) - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 90 * 60:
        return f"{s / 60:.0f}m ago"
    if s < 36 * 3600:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def pct(used: float | None, total: float | None) -> int:
    if not used or not total:
        return 0
    return max(0, min(100, round(100 * used / total)))


def short_time(value: str | None) -> str:
    """``2026-12-01 18:29:08`` (UTC) of an RFC 3339 time."""
    return value.replace("T", " ")[:19] if value else ""


def epoch_time(ts: float | None) -> str:
    return short_time(clock.iso(ts))


templates.env.filters.update(age=age, pct=pct, short_time=short_time, epoch_time=epoch_time)
templates.env.globals.update(prefix=PREFIX, htmx=HTMX, uplot_js=UPLOT_JS, uplot_css=UPLOT_CSS)


def page(
    request: Request, s: Session, name: str, http_status: int = 200, **context: Any
) -> Response:
    """Render ``name`` with the session (principal, csrf, role checks) in its context."""
    return templates.TemplateResponse(
        request,
        name,
        {"s": s, "p": s.principal, "csrf": s.csrf, **context},
        status_code=http_status,
    )


def error_page(request: Request, s: Session, status: int, code: str, message: str) -> Response:
    return page(request, s, "error.html", http_status=status, code=code, message=message)
