"""The relay lease as one invocation holds it: short, renewed while the invocation streams.

The lease on the job record (a conditional write: at most one relay loop writes a job's log) is claimed for
LEASE_SECONDS and renewed every third of that while the invocation lives, never past the Lambda's remaining time.
So a relay that dies (killed, crashed, the control plane stopped) leaves a lease that ends within LEASE_SECONDS;
the reconciler's next sweep (every minute) starts a new loop, well inside the instance's drain wait
(DRAIN_TIMEOUT_SECONDS, 300 s by default): dead relay → new relay ≤ LEASE_SECONDS + one sweep + its start.
An invocation writes nothing once its own hold has ended (monotonic clock), even if it could not renew.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from controlplane.core.models import utcnow

logger = logging.getLogger(__name__)

LEASE_SECONDS = 90.0  # a dead relay's lease ends within this (RELAY_LEASE_SECONDS)
RENEW_FRACTION = 1 / 3  # a hold is renewed once this much of it has passed
RENEW_EVERY_SECONDS = LEASE_SECONDS * RENEW_FRACTION
LEASE_MARGIN_SECONDS = 10.0  # recorded beyond the hold: a slow clock elsewhere never sees it end early


class RelayLease(Protocol):
    """The job's relay lease (adapters/dynamodb.py DynamoJobStore)."""

    def claim_relay(self, job_id: str, owner: str, until: dt.datetime, now: dt.datetime) -> bool: ...
    def shorten_relay(self, job_id: str, owner: str, until: dt.datetime) -> bool: ...


class LeaseHold:
    """This invocation's hold on a job's relay lease (thread-safe: the writer thread renews during long writes)."""

    def __init__(
        self,
        job_id: str,
        owner: str,
        store: RelayLease | None,
        clock: Callable[[], float],
        time_left: Callable[[], float],
        seconds: float = LEASE_SECONDS,
    ) -> None:
        self.job_id = job_id
        self.owner = owner
        self.store = store
        self.clock = clock
        self.time_left = time_left
        self.seconds = seconds
        self.until = float("inf") if store is None else float("-inf")  # monotonic end of the hold
        self._renewed_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def unbounded(cls, clock: Callable[[], float]) -> LeaseHold:
        """No lease (tests, benchmarks, operators): writes are never refused."""
        return cls("", "", None, clock, lambda: float("inf"))

    @classmethod
    def ended(cls, clock: Callable[[], float]) -> LeaseHold:
        """A hold that has ended: every write is refused."""
        hold = cls("", "", None, clock, lambda: 0.0)
        hold.until = float("-inf")
        return hold

    def claim(self) -> bool:
        """Take (or renew) the lease for min(its seconds, the Lambda's remaining time). False: another loop holds
        it, or the job is in a state no relay streams."""
        if self.store is None:
            return True
        with self._lock:
            hold = max(0.0, min(self.seconds, self.time_left()))
            started = self.clock()
            now = utcnow()
            until = now + dt.timedelta(seconds=hold + LEASE_MARGIN_SECONDS)
            if not self.store.claim_relay(self.job_id, self.owner, until, now):
                return False
            self.until = started + hold
            self._renewed_at = started
            return True

    def renew_if_due(self) -> None:
        """Renew once a third of the hold has passed; a failed renewal leaves the hold to run out (then writes
        stop). A renewal that DynamoDB throttles is tried again at the next call."""
        if self.store is None or self.clock() - self._renewed_at < self.seconds * RENEW_FRACTION:
            return
        try:
            if not self.claim():
                logger.warning("relay lease not renewed: another loop holds it", extra={"job_id": self.job_id})
                self._renewed_at = float("inf")  # never again: this invocation is done writing once it ends
        except Exception:  # noqa: BLE001 - e.g. throttled; the hold still runs, the next call retries
            logger.warning("relay lease renewal failed; retrying", extra={"job_id": self.job_id})

    def valid(self) -> bool:
        """Still held: within the hold, and the invocation still has time (a relay shard whose invocation dies sets
        its loops' time to 0, and they stop writing at once)."""
        return self.clock() <= self.until and self.time_left() > 0

    def release_for(self, seconds: float) -> None:
        """The invocation ends normally: its loop comes back within `seconds` (else the reconciler sees it died)."""
        if self.store is not None:
            self.store.shorten_relay(self.job_id, self.owner, utcnow() + dt.timedelta(seconds=seconds))
