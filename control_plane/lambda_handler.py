"""AWS Lambda entry point: the control plane's Starlette app through the Mangum adapter.

``handler`` is what ``iac/compute.yaml`` names (``control_plane.lambda_handler.handler``).
The settings, the app and its boto3 clients are built lazily on the first invocation and then
reused by every later invocation of the same container (nothing is read at import time).

Two kinds of events arrive:
- API Gateway HTTP API (payload format 2.0) requests: served by the app through Mangum;
- ``{"gpufleet": "sweep"}`` from the stack's EventBridge schedule: one pass of the expiry sweep
  (lease expiry, queue TTL), webhook deliveries and a capacity round (docs/capacity.md),
  since a Lambda function runs no background task between invocations.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.settings import Settings, load_settings

log = logging.getLogger(__name__)

SWEEP_EVENT_KEY = "gpufleet"
SWEEP_EVENT_VALUE = "sweep"

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class LambdaApp:
    """One container's app and its Mangum adapter."""

    app: Any
    adapter: LambdaHandler

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if is_sweep_event(event):
            return self.sweep()
        return self.adapter(event, context)

    def sweep(self) -> dict[str, Any]:
        """One pass of the jobs service's expiry sweep; the counts it reports."""
        services = self.app.state.services
        counts: dict[str, int] = services.jobs.sweep()
        delivered = 0
        if services.webhooks is not None:  # no background task in Lambda: deliver here
            import asyncio

            from control_plane.services.webhook_delivery import DeliveryPolicy

            worker = services.webhooks.worker(DeliveryPolicy.from_settings(services.settings))
            delivered = asyncio.run(_deliver_once(worker))
        decided = 0
        if services.capacity is not None:  # no background loop either: decide here
            decided = len(services.capacity.reconcile() or {})
        log.info(
            "sweep: %s, webhooks delivered: %d, capacity pools decided: %d",
            counts,
            delivered,
            decided,
        )
        return {"swept": counts, "webhooks_delivered": delivered, "capacity_decided": decided}


async def _deliver_once(worker: Any) -> int:
    try:
        return int(await worker.run_once())
    finally:
        await worker.aclose()


def is_sweep_event(event: Any) -> bool:
    """True for the scheduled ``{"gpufleet": "sweep"}`` event."""
    return isinstance(event, dict) and event.get(SWEEP_EVENT_KEY) == SWEEP_EVENT_VALUE


def build(settings: Settings) -> LambdaApp:
    """The app for ``settings`` behind Mangum (imports the app and Mangum only now)."""
    from mangum import Mangum

    from control_plane.app import create_app
    from control_plane.composition import build_services

    app = create_app(settings, build_services(settings))
    # lifespan "auto": the app's startup/shutdown run around each invocation, where a
    # container is guaranteed CPU; Mangum skips them for apps without a lifespan.
    return LambdaApp(app=app, adapter=Mangum(app, lifespan="auto"))


@functools.lru_cache(maxsize=1)
def current() -> LambdaApp:
    """The container's ``LambdaApp``, built once from the environment (``GPUFLEET_*``)."""
    return build(load_settings())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry point."""
    return current()(event, context)
