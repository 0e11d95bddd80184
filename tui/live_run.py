"""LiveRun: the traced rollout in a thread beside the TUI (`kvprof trace --tui`)."""
from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable


class QuitFromTUI(KeyboardInterrupt):
    """Raised inside the run when the TUI is closed before the rollout ends (a Ctrl-C from the TUI)."""

    def __str__(self) -> str:
        return "the TUI was closed while the rollout ran"


class LiveRun:
    """Runs `run()` in a daemon thread and keeps its result or exception for the caller."""

    def __init__(self, run: Callable[[], Any]):
        self._run = run
        self.result: Any = None
        self.error: BaseException | None = None
        self.on_done: Callable[[], None] | None = None  # called in the run's thread once it returned or raised
        self._finished = threading.Event()
        self.thread = threading.Thread(target=self._main, name="kvprof-rollout", daemon=True)

    def _main(self) -> None:
        try:
            self.result = self._run()
        except BaseException as exc:  # handed to the caller by outcome(), re-raised there
            self.error = exc
        finally:
            self._finished.set()
            hook = self.on_done
            if hook is not None:
                hook()

    def start(self) -> None:
        self.thread.start()

    @property
    def done(self) -> bool:
        """The run returned or raised (its result or error is set)."""
        return self._finished.is_set()

    def interrupt(self) -> None:
        """Raise QuitFromTUI (a KeyboardInterrupt) inside the run, as Ctrl-C would: a traced run closes
        as `interrupted`. It lands at the run's next Python bytecode (torch kernels finish first)."""
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(QuitFromTUI))

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def outcome(self) -> Any:
        """The run's return value; its exception is re-raised."""
        if self.error is not None:
            raise self.error
        return self.result
