"""What-if runs as background jobs: an id to poll, progress, the report when done.

A run replays history (the whole ledger, or one member's) and can take minutes, so the API
starts it in a thread of its own and answers at once. At most `limit` runs are queued or
running at a time; one more is refused (`Busy`), never queued behind them, so a caller
learns at once that it has to come back. Jobs live in this process's memory only: the
newest `keep` finished ones can be fetched, and a restart forgets them all (a run that was
going is lost; one with `apply` has posted what it had posted, and running it again posts
only what is missing).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from services.ledger.application import what_if as runs
from services.ledger.application.service import Ledger
from services.ledger.application.what_if import WhatIfReport
from services.ledger.domain.errors import Declined
from services.ledger.domain.program import Program

log = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"


class Busy(Exception):
    """As many what-if runs as allowed are already queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} what-if run(s) already going; try again when one is done")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    program_version: str
    member_id: str | None
    apply: bool
    actor: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stage: str = QUEUED  # queued, replay (events), compare (members), done
    done: int = 0
    total: int = 0
    report: WhatIfReport | None = None
    error: str | None = None


class WhatIfJobs:
    def __init__(self, ledger: Ledger, *, limit: int = 1, keep: int = 100) -> None:
        if limit < 1:
            raise ValueError("the what-if concurrency limit is at least 1")
        self.ledger = ledger
        self.limit = limit
        self.keep = keep
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, program: Program, *, member: str | None, apply: bool, actor: str) -> Job:
        """Queue a run and start it in a thread; `Busy` when `limit` runs are going."""
        with self._lock:
            going = sum(job.status in (QUEUED, RUNNING) for job in self._jobs.values())
            if going >= self.limit:
                raise Busy(self.limit)
            job = Job(
                job_id=uuid.uuid4().hex,
                program_version=program.version,
                member_id=member,
                apply=apply,
                actor=actor,
                status=QUEUED,
                created_at=datetime.now(UTC),
            )
            self._jobs[job.job_id] = job
            self._forget_old()
            thread = threading.Thread(
                target=self._run, args=(job.job_id, program), name=f"what-if-{job.job_id[:8]}"
            )
            thread.daemon = True
            self._threads[job.job_id] = thread
        thread.start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (or `timeout`); the job as it then is."""
        with self._lock:
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(job_id)

    def close(self, timeout: float = 10) -> None:
        """Wait a little for runs still going (their threads are daemons: never for ever)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def _update(self, job_id: str, **changes: object) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)  # type: ignore[arg-type]

    def _run(self, job_id: str, program: Program) -> None:
        job = self._update_and_get(job_id, status=RUNNING, started_at=datetime.now(UTC))

        def progress(stage: str, done: int, total: int) -> None:
            self._update(job_id, stage=stage, done=done, total=total)

        try:
            report = runs.what_if(
                self.ledger,
                program,
                member=job.member_id,
                apply=job.apply,
                actor=job.actor,
                progress=progress,
            )
        except Declined as exc:
            self._finish(job_id, error=f"{exc.reason}: {exc.detail}")
        except Exception as exc:
            log.exception("what-if job %s failed", job_id)
            self._finish(job_id, error=f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job_id, report=report)

    def _update_and_get(self, job_id: str, **changes: object) -> Job:
        self._update(job_id, **changes)
        job = self.get(job_id)
        assert job is not None
        return job

    def _finish(
        self, job_id: str, *, report: WhatIfReport | None = None, error: str | None = None
    ) -> None:
        self._update(
            job_id,
            status=DONE if error is None else FAILED,
            stage=DONE if error is None else FAILED,
            finished_at=datetime.now(UTC),
            report=report,
            error=error,
        )
        with self._lock:
            self._threads.pop(job_id, None)

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in (DONE, FAILED)]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]
