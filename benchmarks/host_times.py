"""What the host's CPUs did during one rollout of `overhead.py` (`HostTimes`): CPU seconds of the process and of the
rollout's own thread, the machine's steal time, Python's cyclic collector, and the rollout thread's kernel seconds,
context switches, page faults and migrations between CPUs, the TLB shootdowns the process's CPUs received, the CPU it
ran on and a fixed loop's time on it before and after."""
from __future__ import annotations

import gc
import os
import resource
import time
from typing import Any


def _migrations() -> int | None:
    """How many times the calling thread moved to another CPU (`se.nr_migrations` of /proc/thread-self/sched); None
    where the kernel does not say. A thread that waits (for the GIL, say) and wakes on another CPU refills its caches
    there: user time that no profile frame shows."""
    try:
        with open("/proc/thread-self/sched") as f:
            for line in f:
                if line.startswith("se.nr_migrations"):
                    return int(line.split(":")[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tlb_shootdowns(cpus: set[int]) -> int | None:
    """TLB shootdown interrupts received so far by `cpus` (/proc/interrupts' `TLB` row, x86); None where absent. Every
    unmapping of memory by one thread of a process interrupts the CPUs running its other threads."""
    try:
        with open("/proc/interrupts") as f:
            header = f.readline().split()
            for line in f:
                fields = line.split()
                if fields and fields[0] == "TLB:":
                    counts = fields[1:1 + len(header)]
                    return sum(int(n) for name, n in zip(header, counts) if int(name[3:]) in cpus)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _thread_cpu() -> int | None:
    """The CPU the calling thread runs on now (field 39 of /proc/thread-self/stat); None where the kernel does not say.
    The rollout's thread rarely moves: the CPU it ran on is the one its whole rollout's speed depends on."""
    try:
        with open("/proc/thread-self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def cpu_probe_ms(repeat: int = 3) -> float:
    """The best of `repeat` timings of a fixed pure-Python loop on the calling thread, in ms (~10-20 ms on a server
    core): how fast the CPU it runs on is now. Taken before and after a rollout, it tells a slow CPU (a busy host, a
    shared core) from a rollout slowed by what ran in its process (session 17: single pairs 15-20 % slow)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        total = 0
        for i in range(200_000):
            total += i & 7
        best = min(best, (time.perf_counter_ns() - t0) / 1e6)
    return round(best, 3)


def _steal_s() -> float | None:
    """CPU seconds the hypervisor gave to other guests so far, all of this machine's CPUs together (`steal` of
    /proc/stat's `cpu` line); None where the kernel does not say."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class HostTimes:
    """What the host's CPUs did during one rollout: the process's CPU seconds (every thread: the drain and the
    sampler too), the rollout thread's own, the machine's steal time, and the cyclic collector's seconds. Wall
    time alone cannot tell kvprof's work from a noisy neighbour: a traced run whose process used no more CPU but
    ran longer was slowed by the machine, not by kvprof (session 11). The rollout thread's kernel seconds, context
    switches and page faults (`thread_*`) say whether its extra CPU is in the kernel: each hand-over of the GIL
    to a waiting drain or sampler thread is a futex call, each wait for it a voluntary switch; its migrations and the
    TLB shootdowns of the process's CPUs, whether it ran cache- or TLB-cold."""

    def __init__(self) -> None:
        self.row: dict[str, float | None] = {}
        self._gc_ns = [0, 0, 0]
        self._gc_n = [0, 0, 0]
        self._gc_t0 = 0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Python's cyclic collector, timed per generation: a full collection walks every tracked object the
        # process holds, so what a tracer keeps alive slows the model's thread where no profile frame says so
        if phase == "start":
            self._gc_t0 = time.perf_counter_ns()
        else:
            self._gc_ns[info["generation"]] += time.perf_counter_ns() - self._gc_t0
            self._gc_n[info["generation"]] += 1

    def __enter__(self) -> "HostTimes":
        self._probe0 = cpu_probe_ms()
        gc.callbacks.append(self._on_gc)
        self._cpus = os.sched_getaffinity(0)
        self._moves0, self._tlb0 = _migrations(), _tlb_shootdowns(self._cpus)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._start = (time.perf_counter(), usage.ru_utime + usage.ru_stime, time.thread_time(), _steal_s())
        self._thread0 = resource.getrusage(resource.RUSAGE_THREAD)
        return self

    def __exit__(self, *exc: Any) -> None:
        usage, mine = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_THREAD)
        gc.callbacks.remove(self._on_gc)
        wall0, cpu0, thread0, steal0 = self._start
        self.row = {"rollout_cpu_s": usage.ru_utime + usage.ru_stime - cpu0, "rollout_thread_cpu_s": time.thread_time() - thread0,
                    "steal_s": _delta(steal0, _steal_s()),
                    "host_wall_s": time.perf_counter() - wall0,
                    "gc_s": [round(ns / 1e9, 4) for ns in self._gc_ns], "gc_collections": list(self._gc_n),
                    "thread_sys_s": mine.ru_stime - self._thread0.ru_stime,
                    "thread_voluntary_switches": mine.ru_nvcsw - self._thread0.ru_nvcsw,
                    "thread_involuntary_switches": mine.ru_nivcsw - self._thread0.ru_nivcsw,
                    "thread_minor_faults": mine.ru_minflt - self._thread0.ru_minflt,
                    "thread_migrations": _delta(self._moves0, _migrations()),
                    "tlb_shootdowns": _delta(self._tlb0, _tlb_shootdowns(self._cpus)),
                    "thread_cpu": _thread_cpu(), "cpu_probe_ms": [self._probe0, cpu_probe_ms()]}


def _delta(before: float | None, after: float | None) -> float | None:
    """after - before, or None where either reading is missing (the kernel did not say)."""
    return after - before if before is not None and after is not None else None
