"""A warm feeder for ``wal-fetch``'s spool, run by ``pitr`` while the server it started recovers.

Every restore_command call is a new process; one that finds its file in the spool costs about an
interpreter start, one that does not costs a boto3 import, a storage client, the key derivation
and the GET.  The pitr process already holds the storage client and the key, and knows from the
plan which files recovery asks for and in which order: the history files of the timeline path
(PostgreSQL probes them at the start and the end of recovery), then the segments along the path.
A thread fetches them into the spool ahead of recovery, at most ``window`` segments at a time
(the spool keeps the two segments recovery read last; taking one prunes older ones), and stops
after the last planned segment, when ``stop`` is called (promotion, failure, any exit) or after
repeated storage errors.  A file in flight is marked, so a wal-fetch asking for it waits for it.

Nothing here can fail a recovery: a file the feeder could not fetch is simply not in the spool,
and the restore_command fetches it itself (the existing miss path).  Files are written through
``spool.put`` (temporary name, fsync, rename), 0600 and owned by the data folder's owner.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from coldcopy.context import Context
from coldcopy.core.lsn import wal_key
from coldcopy.wal import spool as walspool
from coldcopy.wal.archive import prefetch_one

log = logging.getLogger(__name__)
WINDOW = 16  # segments in the spool at most: 16 × 16 MiB of disk next to the data folder
WORKERS = 2  # GETs in flight: a GET overlaps the previous segment's decrypt and write
MAX_FAILURES = 3  # consecutive fetch errors before the feeder gives up (the archive is down)
POLL = 0.05  # seconds between looks at the spool while the window is full


class WalFeeder:
    def __init__(
        self,
        ctx: Context,
        spool: Path,
        *,
        histories: list[str],
        absent: list[str],
        segments: list[str],
        owner: tuple[int, int] | None,
        window: int = WINDOW,
        workers: int = WORKERS,
    ) -> None:
        self.ctx, self.spool, self.owner = ctx, spool, owner
        self.histories, self.absent, self.segments = histories, absent, segments
        self.window, self.workers = max(window, 3), max(workers, 1)  # 2 already read + 1 ahead
        self.fed: list[str] = []  # what was put into the spool, in order (for tests and logs)
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._halted = False  # stop() was called (the feeder also sets _stop itself when it is done)
        self._first = threading.Event()  # the histories and the first segment are in (or failed)
        self._thread = threading.Thread(target=self._run, name="coldcopy-walfeeder", daemon=True)

    def start(self) -> WalFeeder:
        self._thread.start()
        return self

    def wait_first(self, timeout: float) -> bool:
        """Wait until recovery's first requests can be served from the spool (or the feeder gave up)."""
        return self._first.wait(timeout)

    def wait_done(self, timeout: float) -> bool:
        """Wait until the feeder has ended by itself (all fed, or given up); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 60) -> None:
        """Stop feeding and wait for the thread; a write in flight finishes or removes its temp file."""
        self._halted = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():  # a GET stuck past the client's own timeouts
                log.warning("the WAL feeder did not stop within %.0f s", timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._feed_histories()
            self._feed_segments()
            self._recheck_absent()
        except Exception as exc:  # noqa: BLE001 - the restore_command fetches what is missing itself
            log.warning("the WAL feeder stopped: %s", exc)
        finally:
            for marker in self.spool.glob(".*.feeding"):  # none is left to make a wal-fetch wait
                marker.unlink(missing_ok=True)
            self._first.set()
            log.debug("WAL feeder done: %d files fed, %d failed", len(self.fed), len(self.failed))

    def _fetch(self, name: str) -> bool:
        marker = walspool.feeding_marker(self.spool, name)
        try:
            if self._stop.is_set():
                return False
            ok = prefetch_one(self.ctx, name, self.spool, self.owner)
            (self.fed if ok else self.failed).append(name)
            return ok
        finally:
            marker.unlink(missing_ok=True)  # after the rename: a waiting wal-fetch finds the file

    def _feed_histories(self) -> None:
        for name in self.histories:
            self._fetch(name)
        for name in self.absent:
            # Checked again now: archived since the plan was made, it is fed; else recorded absent.
            if self._stop.is_set():
                return
            if self.ctx.storage.exists(wal_key(name)):
                self._fetch(name)
            else:
                walspool.put_absent(self.spool, name, self.owner)
                self.fed.append(name + walspool.ABSENT_SUFFIX)

    def _recheck_absent(self) -> None:
        """At the end of recovery PostgreSQL probes again for the next timelines' history to choose a
        new timeline: one archived since the start must not be answered as absent (the copy would
        reuse that timeline's number).  Its marker goes; wal-fetch then gets the file itself."""
        for name in self.absent:
            if self._halted:
                return
            if self.ctx.storage.exists(wal_key(name)):
                (self.spool / (name + walspool.ABSENT_SUFFIX)).unlink(missing_ok=True)

    def _feed_segments(self) -> None:
        failures = 0
        pending: list[tuple[str, Future[bool]]] = []
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="coldcopy-walfeeder") as pool:
            try:
                for i, name in enumerate(self.segments):
                    while not self._stop.is_set() and (
                        len(pending) >= self.workers
                        or walspool.segments_in(self.spool) + len(pending) >= self.window
                    ):
                        if pending and pending[0][1].done():
                            failures = 0 if self._settle(pending.pop(0)) else failures + 1
                        else:
                            self._stop.wait(POLL)
                    if self._stop.is_set() or failures >= MAX_FAILURES:
                        break
                    if not walspool.has(self.spool, name):  # else a miss's own prefetch was faster
                        # Marked from now: a wal-fetch asking for it waits instead of fetching it too.
                        walspool.mark_feeding(self.spool, name, self.owner)
                        pending.append((name, pool.submit(self._fetch, name)))
                        if i == 0:
                            failures = 0 if self._settle(pending.pop(0)) else 1
                    if i == 0:
                        self._first.set()
                for item in pending:
                    self._settle(item)
            finally:
                self._stop.set()  # nothing new starts; the pool waits for the writes in flight

    @staticmethod
    def _settle(item: tuple[str, Future[bool]]) -> bool:
        return item[1].result()
