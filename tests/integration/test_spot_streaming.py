"""After a spot interruption warning the job has ended FAILED / SPOT_INTERRUPTED, but its instance runs on for AWS's
two-minute notice: a relay invocation that starts in that window (the workflow's next one) still streams what the
instance writes, until the instance is gone — no line of the last two minutes is lost."""

from __future__ import annotations

import datetime as dt
import time

from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import utcnow
from tests.integration.test_log_relay import Instance, instance, run_job

__all__ = ["instance"]  # the fixture (a launched job served by a real sshd)


def interrupt(job_id: str, ago: dt.timedelta = dt.timedelta(0)) -> None:
    """What the instance-events Lambda does on the warning (optionally as if it came `ago`)."""
    from controlplane.handlers import container

    jobs = container.pipeline().jobs
    fields = {"failure_reason": FailureReason.SPOT_INTERRUPTED, "failure_message": "a spot interruption warning"}
    jobs.transition(job_id, JobStatus.FAILED, fields=fields | {"ended_at": utcnow() - ago})


def test_a_relay_invocation_within_the_notice_streams_until_the_instance_is_gone(instance: Instance) -> None:
    instance.write(b"before the warning\n")
    interrupt(instance.job_id)
    tail = b"".join(b"checkpointing %d\n" % i for i in range(20))

    def job() -> None:  # the instance writes on, then AWS reclaims it
        for start in range(0, len(tail), 40):
            instance.write(tail[start : start + 40])
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while instance.relayed() != b"before the warning\n" + tail and time.monotonic() < deadline:
            time.sleep(0.1)
        instance.locator.state = "terminated"  # AWS reclaims it: its SSH sessions die with it
        instance.server.drop_sessions()
        instance.server.stop()

    outcome = run_job(instance, job)

    assert outcome.finished
    assert instance.relayed() == b"before the warning\n" + tail
    assert instance.logs.progress(instance.job_id).complete
    record = instance.job()
    assert (record["status"], record["failure_reason"]) == ("FAILED", "SPOT_INTERRUPTED")


def test_past_the_notice_the_relay_completes_the_log_and_stops(instance: Instance) -> None:
    instance.write(b"before the warning\n")
    interrupt(instance.job_id, ago=dt.timedelta(minutes=4))

    outcome = instance.relay_service().relay(instance.job_id)

    assert outcome.finished
    assert outcome.relayed_bytes == 0
    assert instance.logs.progress(instance.job_id).complete
