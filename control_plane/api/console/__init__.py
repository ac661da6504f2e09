"""The web console at ``/console``: the fleet, models and jobs of the signed-in caller.

Served by the control plane itself (same process, same services, same auth): Jinja2
templates rendered on the server, htmx (polling, forms) and uPlot (charts) vendored under
``static/vendor`` at pinned versions with their licences (no CDN, no build step). See
docs/console.md.

    session.py   cookies, CSRF, the ``console()`` wrapper every endpoint goes through
    pages.py     GET pages          actions.py  POST forms
    views.py     pure shaping       render.py   templates and filters
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from control_plane.api.console import actions, pages
from control_plane.api.console.render import STATIC_DIR
from control_plane.api.console.session import PREFIX, console

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    """The console: one mount, so the API's route table and OpenAPI document stay the API's."""
    get, post = ["GET"], ["POST"]
    table: list[BaseRoute] = [
        Route("/", console(pages.home), methods=get),
        Route("/signin", console(pages.signin_form, public=True), methods=get),
        Route("/signin", console(actions.signin, public=True), methods=post),
        Route("/signout", console(actions.signout), methods=post),
        Route("/fleet", console(pages.fleet), methods=get),
        Route("/runners/{runner_id}/drain", console(actions.runner_drain), methods=post),
        Route("/runners/set", console(actions.runner_set), methods=post),
        Route("/models", console(pages.models), methods=get),
        Route("/models/{name}", console(pages.model), methods=get),
        Route("/models/{name}/deployment", console(actions.deployment_put), methods=post),
        Route("/models/{name}/try", console(actions.try_it), methods=post),
        Route("/jobs", console(pages.jobs), methods=get),
        Route("/jobs/{job_id}", console(pages.job), methods=get),
        Route("/jobs/{job_id}/cancel", console(actions.job_cancel), methods=post),
        Route("/charts", console(pages.charts), methods=get),
        Route("/charts/data", console(pages.chart_data), methods=get),
        Route("/admin", console(pages.admin), methods=get),
        Route("/admin/api-keys", console(actions.admin_create_key), methods=post),
        Route("/admin/api-keys/revoke", console(actions.admin_revoke_key), methods=post),
        Route("/admin/join-tokens", console(actions.admin_join_token), methods=post),
        Route("/admin/webhook-secret", console(actions.admin_rotate_webhook_secret), methods=post),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return [Mount(PREFIX, routes=table, name="console")]
