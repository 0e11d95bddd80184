"""Ctrl-C and SIGTERM during a traced run, delivered as an exception into the traced body.

The trace then closes as `interrupted` (its summary written) instead of the process dying with a
half-written folder; a second signal exits at once. The exception is raised asynchronously
(`PyThreadState_SetAsyncExc`) because a signal handler's exception can be swallowed inside a
weakref finalizer; see `InterruptGuard`.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["InterruptGuard", "EXIT_INTERRUPTED", "hold_close_for_tests"]

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


class InterruptGuard:
    """SIGINT and SIGTERM while the traced body runs raise KeyboardInterrupt there, so the trace
    closes as `interrupted`; a second signal exits the process at once (128 + signal number).

    Python runs signal handlers between bytecodes of the main thread, and an exception raised
    while that thread is inside a weakref finalizer (the CPU tracker's frees) is printed and
    dropped; so until the body acknowledges the interrupt, a watcher thread raises it again in
    the main thread, and the dropped copy is not printed (it is no error: it comes back). The watcher also reads the signal wakeup fd, so a second signal ends the
    process even while the main thread is stuck in a long kernel.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REDELIVER_S = 0.2

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        self.body_running = False
        self.signal_name: str | None = None
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._old_unraisable: Any = None

    def _unraisable(self, unraisable: Any) -> None:
        if self.signal_name is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            return  # our interrupt, dropped inside a finalizer: the watcher raises it again
        self._old_unraisable(unraisable)

    def install(self) -> bool:
        """Take over the signals (main thread only; elsewhere signals are left alone)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handler)
        self._old_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self.body_running = True
        return True

    def body_done(self) -> None:
        """The body ended (any way): no more interrupts are raised into it."""
        with self._lock:
            self.body_running = False
            if self._watcher is not None:  # drop a redelivered interrupt that has not landed yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), None)

    def uninstall(self) -> None:
        """Give the signals, the unraisable hook and the wakeup fd back as they were."""
        self.body_done()
        self._stop.set()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._old_unraisable is not None:
            sys.unraisablehook, self._old_unraisable = self._old_unraisable, None
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            if self._watcher is not None:
                self._watcher.join(1.0)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    @staticmethod
    def _exit_now(signum: int) -> None:
        print("kvprof: second interrupt: exiting now; the trace stays as written so far", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:  # a second signal (the watcher may not have seen it yet)
            self._exit_now(signum)
        self.signal_name = signal.Signals(signum).name
        self._start_watcher()
        if self.body_running:
            raise KeyboardInterrupt(f"signal {self.signal_name}")
        print("kvprof: closing the trace; interrupt again to exit at once", file=sys.stderr)

    def _start_watcher(self) -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, args=(r,), name="kvprof-interrupt", daemon=True)
        self._watcher.start()

    def _watch(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], self.REDELIVER_S)
            if ready:
                data = os.read(fd, 16)
                if data:
                    self._exit_now(data[-1])
            with self._lock:
                if self.body_running:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main),
                                                               ctypes.py_object(KeyboardInterrupt))


def hold_close_for_tests() -> None:
    """For tests of a second interrupt: with $KVPROF_TEST_HOLD_CLOSE set, closing writes that file and waits."""
    marker = os.environ.get("KVPROF_TEST_HOLD_CLOSE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
        select.select([], [], [], 60)  # the second signal exits the process from its handler
