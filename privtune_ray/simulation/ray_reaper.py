"""Ends a local Ray's processes when the driver that started them dies, SIGKILL included.

``ray.init()`` without an address starts the head's processes (GCS, raylet, their agents, the workers) as the
driver's children. A driver that exits or is interrupted shuts them down; one killed with SIGKILL cannot, and they
lingered for a minute or more (62 s measured here, about 3 min in an earlier report) holding memory and ports.
:func:`start_reaper` notes the processes ``ray.init`` started and spawns this module as a small watcher in its own
session: every ``POLL_S`` seconds it notes their descendants and checks the driver; once the driver is gone, it
kills every process noted that still runs. It exits as soon as they are gone, however they ended.
A cluster joined by address is never touched: its processes are not the driver's children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 2.0


def children() -> set[int]:
    """The pids of this process's descendants."""
    return {c.pid for c in psutil.Process().children(recursive=True)}


def start_reaper(before: set[int]) -> subprocess.Popen | None:
    """Spawn the watcher for the descendants this process has gained since ``before`` (Ray's, after ``ray.init``):
    all of them, agents included, so that a driver killed before the watcher's first poll leaves none behind."""
    started = sorted(children() - before)
    if not started:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid()), *map(str, started)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a signal to the group does not reach it
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(procs: dict[int, psutil.Process]) -> None:
    """Add to ``procs`` every living descendant of its processes: one pass over the process table (a recursive
    ``children()`` per noted process reads it once each, and cost the watcher 5 % of a core on a 10-process Ray)."""
    kids: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["ppid"]):
        kids.setdefault(proc.info["ppid"], []).append(proc)
    todo = list(procs)
    while todo:
        for child in kids.get(todo.pop(), []):
            if child.pid not in procs:
                procs[child.pid] = child
                todo.append(child.pid)


def watch(driver: int, pids: list[int]) -> None:
    """Wait for ``driver`` to die (or ``pids`` to end on their own), then end every process of ``pids``' trees.

    The trees are noted while the driver lives, at each poll: Ray starts the GCS and the raylet sharing the driver's
    fate (they die with it), but not their children (the agents, the workers), which a tree taken after the death
    would no longer reach."""
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            procs[pid] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
    while _alive(driver):
        _descendants(procs)
        if not any(_alive(p) for p in pids):
            return
        time.sleep(POLL_S)
    # SIGKILL, the last-noted first (the workers and agents, then the raylet and GCS): the driver is gone, so there is
    # nothing to shut down in order, and a process that handles SIGTERM may signal others (the watcher itself was
    # ended that way before any agent was reached)
    for proc in reversed(list(procs.values())):
        try:
            if proc.is_running():  # the same process, not a reused pid
                proc.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])
