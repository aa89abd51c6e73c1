"""The relay lease as an invocation holds it (service/relay_lease.py), with a fake store and clock: short, renewed
while the invocation lives, never past its Lambda's remaining time, and a dead invocation's lease ends soon."""

from __future__ import annotations

import datetime as dt

from controlplane.service.relay_lease import LEASE_SECONDS, RENEW_EVERY_SECONDS, LeaseHold


class Store:
    """The job record's lease: one owner until it expires (wall clock)."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.until = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.claims = 0
        self.refuse = False

    def claim_relay(self, job_id: str, owner: str, until: dt.datetime, now: dt.datetime) -> bool:
        self.claims += 1
        if self.refuse or (self.owner not in {None, owner} and self.until > now):
            return False
        self.owner, self.until = owner, until
        return True

    def shorten_relay(self, job_id: str, owner: str, until: dt.datetime) -> bool:
        if self.owner != owner:
            return False
        self.until = until
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_lease_is_short_and_renewed_while_the_invocation_lives() -> None:
    store, clock = Store(), Clock()
    hold = LeaseHold("job", "loop-a", store, clock, lambda: 900.0)
    assert hold.claim()
    assert hold.until == clock.now + LEASE_SECONDS  # not the Lambda's 900 s
    recorded = store.until

    clock.now += RENEW_EVERY_SECONDS - 1
    hold.renew_if_due()
    assert store.claims == 1  # not due yet
    clock.now += 2
    hold.renew_if_due()
    assert store.claims == 2
    assert store.until > recorded
    assert hold.valid()


def test_a_hold_never_outlives_the_lambdas_remaining_time() -> None:
    store, clock = Store(), Clock()
    hold = LeaseHold("job", "loop-a", store, clock, lambda: 20.0)
    assert hold.claim()
    assert hold.until == clock.now + 20.0


def test_an_invocation_that_cannot_renew_stops_writing_when_its_hold_ends() -> None:
    store, clock = Store(), Clock()
    hold = LeaseHold("job", "loop-a", store, clock, lambda: 900.0)
    assert hold.claim()
    store.refuse = True  # e.g. another loop took it over after this one looked dead
    clock.now += RENEW_EVERY_SECONDS + 1
    hold.renew_if_due()
    assert hold.valid()  # its own hold still runs ...
    clock.now += LEASE_SECONDS
    assert not hold.valid()  # ... and then ends: nothing more is written


def test_a_throttled_renewal_is_retried_at_the_next_call() -> None:
    store, clock = Store(), Clock()
    hold = LeaseHold("job", "loop-a", store, clock, lambda: 900.0)
    assert hold.claim()
    original = store.claim_relay

    def throttled(*args: object) -> bool:
        raise RuntimeError("ProvisionedThroughputExceededException")

    store.claim_relay = throttled  # type: ignore[method-assign]
    clock.now += RENEW_EVERY_SECONDS + 1
    hold.renew_if_due()
    store.claim_relay = original  # type: ignore[method-assign]
    hold.renew_if_due()
    assert store.claims == 2
    assert hold.until == clock.now + LEASE_SECONDS


def test_a_dead_invocations_lease_ends_within_the_lease_seconds() -> None:
    store, clock = Store(), Clock()
    assert LeaseHold("job", "loop-a", store, clock, lambda: 900.0).claim()
    now = dt.datetime.now(dt.UTC)
    assert store.until - now <= dt.timedelta(seconds=LEASE_SECONDS + 11)  # + the recorded margin
    later = now + dt.timedelta(seconds=LEASE_SECONDS + 11)
    assert store.claim_relay("job", "loop-b", later + dt.timedelta(seconds=90), later)  # the new loop takes it


def test_without_a_store_writes_are_never_refused() -> None:
    clock = Clock()
    hold = LeaseHold.unbounded(clock)
    assert hold.claim()
    clock.now += 10**6
    assert hold.valid()
    assert not LeaseHold.ended(clock).valid()


def test_a_shorter_lease_is_renewed_every_third_of_it() -> None:
    """RELAY_LEASE_SECONDS below the default: renewed every third of its own length, so a live loop never loses it."""
    store, clock = Store(), Clock()
    hold = LeaseHold("job", "loop-a", store, clock, lambda: 900.0, seconds=30.0)
    assert hold.claim()
    assert hold.until == clock.now + 30.0
    clock.now += 9.0
    hold.renew_if_due()
    assert store.claims == 1
    clock.now += 2.0
    hold.renew_if_due()
    assert store.claims == 2
    assert hold.until == clock.now + 30.0
