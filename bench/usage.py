"""What a phase of a bench cost this machine: wall time, CPU seconds, peak memory.

CPU and memory are the bench's own process: the app, the Durable runner and the Python stand-ins (ARM,
Log Analytics, Resource Graph) all run in it; Azurite is a Node.js process of its own, read from
``/proc`` where there is one. The process's CPU is split by thread: the activity workers and the
dispatcher (the orchestrators' code with the local Durable engine around it) are what the Functions host
would run; the rest is the stand-ins serving requests, DuckDB's own threads and the bench. Threads that
an activity starts and that end before the phase does (azure-core prepares a Table transaction's parts
on a short-lived pool) count in the rest.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from local.durable.runner import ACTIVITY_THREAD_PREFIX, DISPATCHER_THREAD_NAME

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Usage:
    wall: float  # seconds, time.perf_counter
    cpu: float  # seconds of this process, every thread (time.process_time)
    peak_rss_kb: int  # the process's peak resident set so far (getrusage; Linux reports KB)
    other_cpu: float | None  # seconds of another process (Azurite), None when it cannot be read
    activities_cpu: float = 0.0  # seconds of the activity worker threads
    orchestrations_cpu: float = 0.0  # seconds of the dispatcher thread (orchestrators and the engine)
    cores: CoreTimes | None = None  # the whole machine's core seconds, None without /proc/stat

    @property
    def rest_cpu(self) -> float:
        """This process's seconds outside the function threads: stand-ins, DuckDB, the bench."""
        return self.cpu - self.activities_cpu - self.orchestrations_cpu

    @classmethod
    def now(cls, other_pid: int | None = None) -> Usage:
        return cls(time.perf_counter(), time.process_time(),
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, process_cpu_seconds(other_pid),
                   threads_cpu_seconds(lambda name: name.startswith(ACTIVITY_THREAD_PREFIX)),
                   threads_cpu_seconds(lambda name: name == DISPATCHER_THREAD_NAME),
                   CoreTimes.now())

    def since(self, earlier: Usage) -> Usage:
        """The wall and CPU seconds from ``earlier`` to this; the peak RSS stays the process's so far."""
        other = None
        if self.other_cpu is not None and earlier.other_cpu is not None:
            other = self.other_cpu - earlier.other_cpu
        cores = None
        if self.cores is not None and earlier.cores is not None:
            cores = self.cores.since(earlier.cores)
        return Usage(self.wall - earlier.wall, self.cpu - earlier.cpu, self.peak_rss_kb, other,
                     self.activities_cpu - earlier.activities_cpu,
                     self.orchestrations_cpu - earlier.orchestrations_cpu, cores)


@dataclass(frozen=True)
class CoreTimes:
    """Seconds of every core of the machine together, from ``/proc/stat``'s first line: busy (user, nice,
    system, irq, softirq), idle (idle and iowait) and stolen (``steal``: the hypervisor ran another guest
    while this one had work). On a shared virtual machine stolen time lengthens wall time without any
    process here using more CPU, so a wall figure is read beside it."""

    busy: float
    idle: float
    stolen: float

    @classmethod
    def now(cls, stat: Path = Path("/proc/stat")) -> CoreTimes | None:
        try:
            first = stat.read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if first[0] != "cpu" or len(first) < 9:
            return None
        seconds = [int(f) / _TICKS_PER_SECOND for f in first[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = seconds
        return cls(user + nice + system + irq + softirq, idle + iowait, steal)

    def since(self, earlier: CoreTimes) -> CoreTimes:
        return CoreTimes(self.busy - earlier.busy, self.idle - earlier.idle, self.stolen - earlier.stolen)


# A fixed piece of the kind of work the product does most (JSON in and out, dicts, strings), timed before
# and after each phase: on a shared virtual machine the same code can take half as long again from one
# hour to the next (another guest on the host), so two runs' CPU and wall figures compare only beside
# their reference seconds.
_REFERENCE_DOCUMENT = {
    "machines": [
        {"id": f"/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm{i}",
         "patches": [{"name": f"package-{j}", "version": f"1.{j}.{i}", "classifications": ["Security"]}
                     for j in range(20)]}
        for i in range(20)
    ],
}
REFERENCE_ROUNDS = 200


def reference_seconds(repeats: int = 5) -> float:
    """The fewest CPU seconds of this thread, over ``repeats`` tries, that REFERENCE_ROUNDS JSON round
    trips of _REFERENCE_DOCUMENT take (the fewest: a try that another thread interrupted counts less)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(REFERENCE_ROUNDS):
            json.loads(json.dumps(_REFERENCE_DOCUMENT))
        best = min(best, time.thread_time() - started)
    return best


def threads_cpu_seconds(named: Callable[[str], bool]) -> float:
    """CPU seconds so far of this process's live threads whose name ``named`` accepts (their own clocks)."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.ident is None or not named(thread.name):
            continue
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return total


def process_cpu_seconds(pid: int | None) -> float | None:
    """User and system seconds of process ``pid`` and its waited-for children, from ``/proc/{pid}/stat``."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 (state) is fields[0]
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICKS_PER_SECOND
