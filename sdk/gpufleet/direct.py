"""Direct mode in the SDK: ``infer(..., direct=True)`` (docs/direct.md).

The client asks the control plane for a ticket (``POST /v1/models/{name}/direct``), keeps it
per (model, version, region) and renews it ``RENEW_BEFORE_S`` before it expires (or at
two thirds of its life for short tickets), then sends the KServe v2 JSON request straight to
the runner's URL with ``Authorization: Bearer <ticket>``.

Fallback to the control plane (``POST /v1/models/{name}/infer``), for this call:

- no ticket to be had (503: no runner with direct mode serves the model); remembered for
  ``NO_DIRECT_S`` so calls do not ask again each time;
- the runner is unreachable (connection error, timeout) or answers 401 (ticket refused:
  key rotated out, runner replaced), 404 or 5xx: the ticket is dropped (the next call
  fetches a new one, possibly for another runner).

A 400 from the runner (inputs the model refuses) is raised as the control plane would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from gpufleet import _ops
from gpufleet._transport import Core, Op, Send, seg
from gpufleet.errors import InvalidRequestError, UnavailableError
from gpufleet.tensors import to_arrays
from gpufleet.wire import DirectRequest, DirectTicket, Tensor

log = logging.getLogger("gpufleet")

RENEW_BEFORE_S = 30.0
NO_DIRECT_S = 5.0
DIRECT_INLINE_LIMIT = 64 * 1024 * 1024
FALLBACK_STATUSES = frozenset({401, 403, 404, 502, 503, 504})

Key = tuple[str, str | None, str | None]


@dataclass
class _Entry:
    ticket: DirectTicket
    renew_at: float  # time.monotonic()


class DirectTickets:
    """The tickets of one client (thread-safe), and the models known to have no direct
    runner right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[Key, _Entry] = {}
        self._none_until: dict[Key, float] = {}
        self.fallbacks = 0  # calls that went through the control plane instead
        self.direct_calls = 0

    def get(self, key: Key) -> DirectTicket | None:
        with self._lock:
            hit = self._tickets.get(key)
            if hit is not None and time.monotonic() < hit.renew_at:
                return hit.ticket
            return None

    def put(self, key: Key, ticket: DirectTicket) -> None:
        life = float(ticket.expires_in)
        renew_in = max(life - RENEW_BEFORE_S, life * 2 / 3)
        with self._lock:
            self._tickets[key] = _Entry(ticket, time.monotonic() + renew_in)
            self._none_until.pop(key, None)

    def drop(self, key: Key, ticket: DirectTicket | None = None) -> None:
        with self._lock:
            hit = self._tickets.get(key)
            if hit is not None and (ticket is None or hit.ticket.ticket == ticket.ticket):
                del self._tickets[key]

    def mark_none(self, key: Key) -> None:
        with self._lock:
            self._none_until[key] = time.monotonic() + NO_DIRECT_S

    def none_now(self, key: Key) -> bool:
        with self._lock:
            return time.monotonic() < self._none_until.get(key, 0.0)


def fetch_ticket(
    core: Core, model: str, version: str | None, region: str | None
) -> Op[DirectTicket]:
    """``POST /v1/models/{model}/direct``."""
    body = DirectRequest(version=version, region=region).model_dump(mode="json", exclude_none=True)
    resp = yield from core.request(
        "POST", f"/v1/models/{seg(model)}/direct", json=body, idempotent=True
    )
    return DirectTicket.model_validate(resp.json())


def _kserve_body(
    tensors: list[Tensor], outputs: Iterable[str] | None, parameters: Mapping[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [t.model_dump(mode="json", exclude_none=True) for t in tensors]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def infer_direct(
    core: Core,
    tickets: DirectTickets,
    model: str,
    inputs: _ops.Inputs,
    version: str | None,
    timeout: float | None,
    outputs: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    region: str | None = None,
) -> Op[dict[str, np.ndarray[Any, Any]]]:
    """Inference straight at a runner with a ticket; the control plane when that fails."""
    key: Key = (model, version, region)

    def fallback(why: str) -> Op[dict[str, np.ndarray[Any, Any]]]:
        tickets.fallbacks += 1
        log.info("direct mode: %s; through the control plane", why)
        out = yield from _ops.infer(core, model, inputs, version, timeout, outputs, parameters)
        return out

    ticket = tickets.get(key)
    if ticket is None:
        if tickets.none_now(key):
            return (yield from fallback(f"no direct runner for {model!r} (recently)"))
        try:
            ticket = yield from fetch_ticket(core, model, version, region)
        except UnavailableError as exc:
            tickets.mark_none(key)
            return (yield from fallback(f"no ticket ({exc})"))
        tickets.put(key, ticket)
    cast = yield from _ops._cast(core, model, version, inputs)
    tensors = yield from _ops.encode_inputs(core, cast, DIRECT_INLINE_LIMIT)
    if any(t.data_ref is not None for t in tensors):
        return (yield from fallback("inputs too large to send inline"))
    request = httpx.Request(
        "POST",
        f"{ticket.url}/v2/models/{seg(model)}/versions/{seg(ticket.version)}/infer",
        json=_kserve_body(tensors, outputs, parameters),
        headers={"Authorization": f"Bearer {ticket.ticket}"},
        extensions={"timeout": httpx.Timeout(core.timeout + (timeout or 0.0)).as_dict()},
    )
    try:
        resp: httpx.Response = yield Send(request, external=True)
    except httpx.TransportError as exc:
        tickets.drop(key, ticket)
        return (yield from fallback(f"runner {ticket.url} unreachable ({type(exc).__name__})"))
    if resp.status_code in FALLBACK_STATUSES or resp.status_code >= 500:
        tickets.drop(key, ticket)
        return (yield from fallback(f"runner answered {resp.status_code}: {_message(resp)}"))
    if resp.status_code != 200:
        raise InvalidRequestError(_message(resp), response=resp, code="invalid_request")
    tickets.direct_calls += 1
    body = resp.json()
    return to_arrays(
        Tensor(
            name=o["name"],
            datatype=o["datatype"],
            shape=o["shape"],
            data=o.get("data"),
        )
        for o in body.get("outputs", [])
    )


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or f"HTTP {resp.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {resp.status_code}"
