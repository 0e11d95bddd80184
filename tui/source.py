"""One opened trace: its follower, the latest view built from it, or the error that stopped it.

`refresh()` runs off the UI thread (in the app's follow worker): it polls the folder and, when
the trace changed, rebuilds the view. The UI thread only reads `view`, `error` and `state`,
which are replaced whole, never mutated.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from kvprof.read.live import FollowState, TraceFollower
from kvprof.read.manifest import DONE
from tracers.trace_io import META_FILE, TraceError, read_meta
from tui.model import TraceView, build_view

# Most of the time the follow loop may spend rebuilding views (the rebuild of a live trace grows with its rows and
# holds the GIL): a third in a TUI process of its own; beside the rollout it watches (`kvprof trace --tui`), whose
# model thread waits for the GIL meanwhile, a twentieth once a rebuild takes a second or more (a multi-million-row
# run: the TUI would otherwise slow the traced run by up to a third; small traces refresh as before).
REBUILD_SHARE = 1 / 3
REBUILD_SHARE_BESIDE_ROLLOUT = 0.05
BIG_REBUILD_S = 1.0


def follow_wait_s(poll_s: float, spent_s: float, beside_rollout: bool) -> float:
    """Seconds to sleep after a refresh that took `spent_s`: the poll interval, or longer, so that refreshing takes
    at most its share of the time."""
    share = REBUILD_SHARE_BESIDE_ROLLOUT if beside_rollout and spent_s >= BIG_REBUILD_S else REBUILD_SHARE
    return max(poll_s - spent_s, spent_s * (1 - share) / share)


class TraceSource:
    """A trace folder being read (once, or followed while it is written)."""

    def __init__(self, path: str | Path, wait_for_start: bool = False, newest: Callable[[], Path] | None = None):
        self.path = Path(path)
        self.wait_for_start = wait_for_start  # following: a folder without meta.json yet is "waiting"
        # A sweep cell: the folder of its newest attempt (a killed attempt is retried as `<cell>.a2`);
        # the source moves there, and only an attempt that ended complete or oom is final.
        self.newest = newest
        self.follower = TraceFollower(self.path)
        self.view: TraceView | None = None
        self.error: str | None = None
        self.state: FollowState = self.follower.state
        self.build_s = 0.0
        self.version = 0  # bumped each time `view` or `error` changes
        self.seen_running = False  # a poll saw status `running` (the trace was written while we watched)
        self._lock = threading.Lock()  # one refresh at a time (a replaced follow worker may still be in one)

    @property
    def name(self) -> str:
        return self.view.name if self.view is not None else self.path.name

    @property
    def finished(self) -> bool:
        """Nothing will change any more (closed with summary, or unreadable; a sweep cell: its
        attempt ended complete or oom)."""
        if self.newest is not None and self.follower.finished and self.state.status not in DONE:
            return False  # a retry may still come
        return self.error is not None or self.follower.finished

    def refresh(self) -> bool:
        """Poll the folder; rebuild the view when the trace changed. True when something changed."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        moved = self._follow_newest_attempt()
        return self._poll() or moved

    def _follow_newest_attempt(self) -> bool:
        if self.newest is None:
            return False
        path = self.newest()
        if path == self.path:
            return False
        self.path = path
        self.follower = TraceFollower(path)
        self.state = self.follower.state
        self.view, self.error = None, None
        self.version += 1
        return True

    def _poll(self) -> bool:
        try:
            changed = self.follower.poll()
            if self.follower.phase == "waiting" and not self.wait_for_start:
                read_meta(self.path)  # raises the reader's own message: no such folder, no meta.json
        except TraceError as exc:
            return self._fail(str(exc))
        self.state = self.follower.state
        self.seen_running |= self.state.status == "running"
        if not changed:
            return False
        t0 = time.perf_counter()
        try:
            trace = self.follower.trace()  # TraceError for records the reader cannot use
            if trace is None:
                return True
            view = build_view(trace)
        except (TraceError, KeyError, ValueError) as exc:  # a trace whose tables the analyses cannot use
            return self._fail(f"{type(exc).__name__}: {exc}")
        self.build_s = time.perf_counter() - t0
        self.view = view
        self.error = None
        self.version += 1
        return True

    def _fail(self, message: str) -> bool:
        if self.error == message:
            return False
        self.error = message
        self.version += 1
        return True

    def waiting_to_start(self) -> bool:
        """Following a folder that has no meta.json yet (a trace that has started is only loading)."""
        return self.wait_for_start and self.state.phase == "waiting" and not (self.path / META_FILE).is_file()

    def age_s(self) -> float | None:
        """Seconds since the newest event of the trace."""
        return self.follower.last_event_age_s()
