"""Which node an actor runs on: Ray's node id inside a Ray worker process, else this host's name."""

from __future__ import annotations

import socket
import sys


def node_id() -> str:
    """The Ray node id of this process's node when it is a Ray worker (or a connected driver), else the hostname."""
    ray = sys.modules.get("ray")  # never imports Ray: an in-process run has not
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()
