"""Host stacks (DESIGN section 6): `py-spy record` attached to this process, saved beside the trace.

py-spy's `--format chrometrace` (py-spy >= 0.4) is the one output with timestamps: a Chrome
trace-event list of B/E events per Python frame, `ts` in microseconds on py-spy's own monotonic
clock counted from when its writer started; consecutive samples with the same stack are merged
into one slice. (`raw` and `speedscope` carry sample counts or weights, not times.) `--idle` keeps
the stack of a waiting thread, so the thread's timeline has no holes. The file is written as
`host_profile.json` in the trace folder and opens as is in ui.perfetto.dev.

py-spy's clock origin is unknown to us, so the profiler aligns it with the trace clock: right
after py-spy starts sampling, and again just before it stops, this thread alternates between two
marker functions (`_kvprof_align_a` / `_kvprof_align_b`), each for a few sample periods, noting
their times on the trace clock. A slice of a marker begins at the first sample that sees it, never
before the marker started, so each marker gives offset = trace time - py-spy ts minus that slice's
delay; the median over markers is used (see `align`), and the spread of the estimates (about one
sample period plus py-spy's processing latency) is stored as the alignment's error bound. Both clocks are CLOCK_MONOTONIC on Linux, so there is no drift to fit.

If py-spy is missing, lacks chrometrace, cannot attach (no ptrace permission: containers need
CAP_SYS_PTRACE, Yama's ptrace_scope may forbid it), or dies, the run goes on and
`meta["host_profile"]` says why there is no profile.

Reading (`read_host_intervals`) needs neither torch nor py-spy.
"""
from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tracers.host_stacks import HOST_PROFILE_FILE, PROFILE_FORMAT, align, load_chrometrace

if TYPE_CHECKING:  # pragma: no cover
    from tracers.session import TraceSession

DEFAULT_RATE_HZ = 100
ATTACH_TIMEOUT_S = 20.0  # py-spy prints its "Sampling process" line once attached
STOP_TIMEOUT_S = 60.0  # writing a long profile takes a while
ALIGN_ROUNDS = 2  # marker alternations at start and at stop
ALIGN_PERIODS = 4  # sample periods spent in each marker
INSTALL_HINT = "install the host extra: pip install 'kvprof[host]' (py-spy >= 0.4)"
_STARTED = "py-spy> Sampling process"


@dataclass(frozen=True)
class HostProfileOptions:
    """How to run py-spy: samples per second, native frames, which executable."""

    rate_hz: int = DEFAULT_RATE_HZ
    native: bool = False
    executable: str = "py-spy"

    def __post_init__(self) -> None:
        if not 1 <= self.rate_hz <= 10_000:
            raise ValueError(f"host profile rate must be 1..10000 samples per second, got {self.rate_hz}")


def _kvprof_align_a(until_ns: int) -> None:
    while time.perf_counter_ns() < until_ns:
        pass


def _kvprof_align_b(until_ns: int) -> None:
    while time.perf_counter_ns() < until_ns:
        pass


class HostProfiler:
    """One `py-spy record` subprocess attached to `pid`; `start()` then `stop()`.

    `clock()` is the trace clock (ns); `info` is the `meta["host_profile"]` entry, kept current.
    """

    def __init__(self, folder: str | Path, options: HostProfileOptions, clock: Callable[[], int], pid: int | None = None):
        self.folder = Path(folder)
        self.options = options
        self.clock = clock
        self.pid = os.getpid() if pid is None else pid
        self.thread_ident = threading.get_ident()  # the thread whose stages are traced
        self._proc: subprocess.Popen | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self._marks: list[tuple[str, int, int]] = []  # (marker, start ns, end ns) on the trace clock
        self.info: dict[str, Any] = {
            "status": "off", "reason": None, "file": None, "format": PROFILE_FORMAT, "rate_hz": options.rate_hz,
            "native": options.native, "pid": self.pid, "thread_ident": self.thread_ident,
        }

    def _unavailable(self, reason: str) -> bool:
        self.info.update(status="unavailable", reason=reason)
        return False

    def start(self) -> bool:
        """Attach py-spy; False (with `info["reason"]`) when there will be no profile."""
        exe = shutil.which(self.options.executable)
        if exe is None:
            return self._unavailable(f"py-spy not found ({self.options.executable!r} is not an executable on PATH); {INSTALL_HINT}")
        try:
            help_text = subprocess.run([exe, "record", "--help"], capture_output=True, text=True, timeout=15).stdout
            version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=15).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return self._unavailable(f"{exe} does not run ({type(exc).__name__}: {exc})")
        self.info["py_spy"] = version or None
        if PROFILE_FORMAT not in help_text:
            return self._unavailable(f"{version or exe} has no '--format {PROFILE_FORMAT}' (the only output with "
                                     f"timestamps); {INSTALL_HINT}")
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / HOST_PROFILE_FILE
        cmd = [exe, "record", "--pid", str(self.pid), "--format", PROFILE_FORMAT, "--rate", str(self.options.rate_hz),
               "--idle", "--output", str(out)]
        if self.options.native:
            cmd.append("--native")
        self.info["command"] = cmd
        try:
            # Its own session: a terminal Ctrl-C stops the rollout, while we stop py-spy ourselves.
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        except OSError as exc:
            return self._unavailable(f"cannot start {exe} ({exc.strerror or exc})")
        if not self._wait_attached():
            return False
        self._reader = threading.Thread(target=self._drain, name="kvprof-py-spy-output", daemon=True)
        self._reader.start()
        self.info.update(status="recording", file=HOST_PROFILE_FILE)
        self._align()
        return True

    def _wait_attached(self) -> bool:
        """Read py-spy's output until it says it samples, exits, or the timeout passes."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        buf = b""
        ended = False  # py-spy closed its output or exited
        while time.monotonic() < deadline and not ended:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 4096)
                ended = not chunk
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").rstrip()
                    self._output.append(text)
                    if text.startswith(_STARTED):
                        if buf:
                            self._output.append(buf.decode(errors="replace"))
                        return True
            else:
                ended = self._proc.poll() is not None
        if buf:
            self._output.append(buf.decode(errors="replace").rstrip())
        if ended:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
            return self._unavailable(
                f"py-spy could not attach to pid {self.pid} (exit {self._proc.returncode}){self._tail(': ')}; "
                "attaching needs ptrace permission (root, CAP_SYS_PTRACE in containers, or kernel.yama.ptrace_scope 0)")
        self._kill()
        return self._unavailable(f"py-spy did not start sampling pid {self.pid} within {ATTACH_TIMEOUT_S:.0f} s"
                                 f"{self._tail(': ')}")

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in iter(self._proc.stdout.readline, b""):
            self._output.append(line.decode(errors="replace").rstrip())

    def _tail(self, prefix: str = "") -> str:
        lines = [l for l in self._output if l.strip()]
        return prefix + " | ".join(lines[-4:]) if lines else ""

    def _align(self) -> None:
        """Alternate the two marker functions, ALIGN_PERIODS sample periods each."""
        period_ns = int(1e9 / self.options.rate_hz)
        for _ in range(ALIGN_ROUNDS):
            for fn in (_kvprof_align_a, _kvprof_align_b):
                t0 = self.clock()
                fn(time.perf_counter_ns() + ALIGN_PERIODS * period_ns)
                self._marks.append((fn.__name__, t0, self.clock()))

    def stop(self) -> dict[str, Any]:
        """Mark, stop py-spy (SIGINT: it writes its file), and align; returns `info`."""
        if self._proc is None:
            return self.info
        if self._proc.poll() is None:
            self._align()
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
                self.info.update(status="failed", reason=f"py-spy did not finish writing within {STOP_TIMEOUT_S:.0f} s")
                return self.info
        else:
            self.info["note"] = f"py-spy exited before the run ended (exit {self._proc.returncode}){self._tail(': ')}"
        if self._reader is not None:
            self._reader.join(timeout=5)
        path = self.folder / HOST_PROFILE_FILE
        if not path.is_file():
            self.info.update(status="failed", file=None,
                             reason=f"py-spy wrote no profile (exit {self._proc.returncode}){self._tail(': ')}")
            return self.info
        try:
            events = load_chrometrace(path)
        except ValueError as exc:
            self.info.update(status="failed", reason=str(exc))
            return self.info
        self.info["alignment"] = align(events, self._marks, self.thread_ident)
        self.info["status"] = "recorded"
        if self.info["alignment"]["offset_ns"] is None:
            self.info["reason"] = "profile recorded but not aligned with the trace clock: " + self.info["alignment"]["note"]
        return self.info

    def _kill(self) -> None:
        assert self._proc is not None
        try:
            self._proc.kill()
        except ProcessLookupError:
            pass
        self._proc.wait()


def start_host_profile(session: "TraceSession", options: HostProfileOptions | None = None) -> HostProfiler:
    """Attach py-spy to this process for `session`'s lifetime: stopped (and recorded in
    `session.meta["host_profile"]`) when the session closes. Never raises for an unavailable
    py-spy: the reason goes to meta and to the session's notes."""
    profiler = HostProfiler(session.folder, options or HostProfileOptions(), session.now_ns)
    try:
        ok = profiler.start()
    except OSError as exc:  # reading py-spy's pipe failed: no profile, the run goes on
        if profiler._proc is not None and profiler._proc.poll() is None:
            profiler._kill()
        ok = profiler._unavailable(f"py-spy could not be started or read ({exc})")
    session.meta["host_profile"] = profiler.info
    if not ok:
        session.notes.append(f"no host profile: {profiler.info['reason']}")
        return profiler

    def stop(s: "TraceSession") -> None:
        info = profiler.stop()
        s.meta["host_profile"] = info
        if info["status"] != "recorded" or info.get("reason"):
            s.notes.append(f"host profile: {info.get('reason')}")

    session.add_close_hook(stop)
    return profiler


# --------------------------------------------------------------------------- reading
