"""The simulated clock: the wall-clock a real deployment would see, by discrete-event simulation of a round.

For device i selected in a round that starts at T (all times in seconds):

    download  t_d = latency + bytes_down / (downlink · j_down)        (bytes → bits: × 8 / 10⁶ per Mbit)
    compute   t_c = measured compute seconds × compute_factor
    upload    t_u = latency + bytes_up / (uplink · j_up)
    arrival   a_i = T + t_d + t_c + t_u

Messages are served first-come first-served by R top-model replicas; message i takes its measured top
seconds s_i on the first free replica. A message arriving after T + ``deadline`` is late and not served.
The server closes the round when every selected device has delivered or dropped out (a drop-out is noticed
at once [ours]), or at T + deadline when a message is late; the round ends when the served messages are
done, the round is closed, and the synchronised optimiser step (measured ``step_s``) has run.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

BITS_PER_MEGABIT = 1e6


def transfer_s(n_bytes: int, mbps: float, latency_s: float, jitter: float = 1.0) -> float:
    """Seconds to move ``n_bytes`` over a link of ``mbps`` megabits/s (× jitter) with one-way latency."""
    return latency_s + n_bytes * 8 / (mbps * jitter * BITS_PER_MEGABIT)


@dataclass
class DeviceTiming:
    device: int
    download_s: float
    compute_s: float  # simulated (measured × factor)
    upload_s: float
    top_s: float  # measured seconds of the top model on this message
    dropped: bool = False


@dataclass
class Event:
    device: int
    arrival_s: float | None  # None: dropped, never arrives
    top_start_s: float | None = None
    top_end_s: float | None = None
    status: str = "ok"  # ok | late | dropped


@dataclass
class RoundTiming:
    start_s: float
    end_s: float
    events: dict[int, Event]

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def simulate_round(
    start_s: float, devices: list[DeviceTiming], replicas: int, step_s: float, deadline_s: float | None = None
) -> RoundTiming:
    """Run the round's events: arrivals (in time order) queue for the first free of ``replicas`` servers."""
    events = {d.device: Event(d.device, None, status="dropped") for d in devices if d.dropped}
    arrivals: list[tuple[float, int, float]] = []  # (arrival, device, top seconds)
    for d in devices:
        if not d.dropped:
            arrival = start_s + d.download_s + d.compute_s + d.upload_s
            events[d.device] = Event(d.device, arrival)
            heapq.heappush(arrivals, (arrival, d.device, d.top_s))
    free_at = [start_s] * replicas  # heap of the times each replica becomes free
    closed, last_done = start_s, None  # when the server stops waiting; when its last served message is done
    while arrivals:
        arrival, device, top_s = heapq.heappop(arrivals)
        event = events[device]
        if deadline_s is not None and arrival > start_s + deadline_s:
            event.status = "late"
            closed = start_s + deadline_s
            continue
        closed = max(closed, arrival)
        begin = max(arrival, heapq.heappop(free_at))
        event.top_start_s, event.top_end_s = begin, begin + top_s
        heapq.heappush(free_at, event.top_end_s)
        last_done = event.top_end_s if last_done is None else max(last_done, event.top_end_s)
    end = closed if last_done is None else max(last_done, closed) + step_s
    return RoundTiming(start_s=start_s, end_s=end, events=events)
