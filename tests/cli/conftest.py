"""CLI fixtures: the real control plane in process and on a loopback socket."""

from tests.helpers.fleet import *  # noqa: F403
