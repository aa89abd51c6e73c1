"""Budgets end to end on the local runtime (docs/budgets.md): a budget that admits exactly two jobs' worst case
admits two, queues the third and admits it when one ends; a job over the whole budget is refused with the figures;
a queued job can be cancelled; usage equals the sum of the jobs' costs. (Concurrent submissions racing for the last
slot: tests/integration/test_admission.py, which can submit in parallel; the local API front runs one request at a
time, as one Lambda execution environment does.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest

from tests.e2e.harness import NEEDS_SANDBOXES, Local, forget_process_state, start_local

pytestmark = NEEDS_SANDBOXES

QUICK = {"resources": {"cpus": "2"}, "run": "echo working; sleep 2; echo done", "max_runtime_minutes": 5}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    plane, saved = start_local(tmp_path_factory.mktemp("ec2jobs"), "budgets")
    try:
        yield plane
    finally:
        plane.plane.stop()
        forget_process_state(saved)


def _admin(local: Local) -> Local:
    return Local(local.plane, local.provider_id, local.queue_url, token=local.plane.issue_admin_token())


def _worst_case(local: Local) -> Decimal:
    """One QUICK job's worst case as the control plane reserves it: what GET /usage shows reserved while it is the
    team's only admitted job. It then runs to its end (its cost is the month's first spend)."""
    job_id = local.submit(QUICK)
    status, usage = local.call("GET", "/usage")
    assert status == 200, usage
    assert usage["active_jobs"] == 1
    local.wait(job_id, timeout=120)
    return Decimal(str(usage["reserved_usd"]))


def _status(local: Local, job_id: str) -> dict[str, Any]:
    status, job = local.call("GET", f"/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


def test_a_budget_for_two_jobs_admits_two_queues_the_third_and_admits_it_when_one_ends(local: Local) -> None:
    worst = _worst_case(local)  # (also the month's first spend: counted below)
    admin = _admin(local)
    status, _ = admin.call("GET", "/jobs")
    assert status == 403  # an admin token acts for no team
    status, spent = local.call("GET", "/usage")
    assert status == 200, spent
    already = Decimal(str(spent["spent_usd"]))
    assert worst > 0
    budget = already + worst * 2 + worst / 2  # room for two worst cases, not three
    status, body = admin.call("PUT", "/admin/teams/budgets/limits", {"monthly_budget_usd": float(budget)})
    assert status == 200, body

    accepted = []
    for _ in range(3):
        status, body = local.call("POST", "/jobs", QUICK | {"provider_id": local.provider_id})
        assert status == 202, body
        accepted.append(body)
    assert [a["status"] for a in accepted] == ["PENDING", "PENDING", "QUEUED"]
    third = accepted[2]["job_id"]
    assert "budget" in accepted[2]["status_detail"]

    status, refused = local.call(
        "POST", "/jobs", QUICK | {"provider_id": local.provider_id, "max_runtime_minutes": 10080}
    )
    assert status == 422, refused
    assert refused["code"] == "OVER_LIMIT"
    assert "over the team's whole monthly budget of $" in refused["message"]

    fourth = local.submit(QUICK)  # queued behind the third; cancelled while it waits
    assert _status(local, fourth)["status"] == "QUEUED"
    status, cancelled = local.call("POST", f"/jobs/{fourth}/cancel")
    assert status == 200, cancelled
    assert cancelled["status"] == "CANCELLED"

    ended = [local.wait(a["job_id"], timeout=180) for a in accepted[:2]]
    assert [job["status"] for job in ended] == ["SUCCEEDED", "SUCCEEDED"]
    final = local.wait(third, timeout=180)  # admitted when one of the first two ended
    assert final["status"] == "SUCCEEDED"
    assert local.logs(third)[0] == "working\ndone\n"
    assert _status(local, fourth)["status"] == "CANCELLED"

    deadline = time.monotonic() + 30
    while True:  # the last end is booked by whichever Lambda ended the job: wait for it, not a fixed time
        status, usage = local.call("GET", "/usage")
        if usage["active_jobs"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    costs = already + sum(Decimal(str(job["cost_estimate"])) for job in [*ended, final])
    assert Decimal(str(usage["spent_usd"])) == costs
    assert usage["jobs_by_state"] == {"CANCELLED": 1, "SUCCEEDED": 4}
    assert usage["reserved_usd"] == 0
    assert abs(Decimal(str(usage["remaining_usd"])) - (budget - costs)) <= Decimal("0.000002")  # micro-dollars
    assert Decimal(str(usage["spent_usd"])) <= budget


CONCURRENT = 8
LIMIT = 2


def test_concurrent_event_submissions_never_run_more_than_the_limit_at_once(local: Local) -> None:
    """N Job Submission events at once: their workflows' Validate steps run concurrently and race for the team's
    two instance slots; at no moment do more than two of the jobs have an instance, and every job still runs."""
    admin = _admin(local)
    status, body = admin.call("PUT", "/admin/teams/budgets/limits", {"max_concurrent_instances": LIMIT})
    assert status == 200, body
    detail = QUICK | {"provider_id": local.provider_id, "name": "raced"}
    boto3.client("events").put_events(
        Entries=[
            {
                "Source": "ec2jobs.team.budgets",
                "DetailType": "Job Submission",
                "Detail": json.dumps(detail | {"idempotency_key": f"raced-{n}"}),
                "EventBusName": local.plane.event_bus_name,
            }
            for n in range(CONCURRENT)
        ]
    )
    deadline, jobs = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        _, page = local.call("GET", "/jobs?limit=100")
        jobs = [j for j in page["jobs"] if j.get("name") == "raced"]
        if len(jobs) == CONCURRENT:
            break
        time.sleep(0.2)
    assert len(jobs) == CONCURRENT, f"{len(jobs)} of the {CONCURRENT} submissions became jobs"
    ended = [local.wait(job["job_id"], timeout=300) for job in jobs]
    assert [job["status"] for job in ended] == ["SUCCEEDED"] * CONCURRENT
    # Each job's instance from its launch to its end: never more than LIMIT at once.
    edges = sorted(
        [(job["launched_at"], 1) for job in ended] + [(job["ended_at"], -1) for job in ended],
        key=lambda edge: (edge[0], edge[1]),  # an end before a launch at the same instant
    )
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    assert peak <= LIMIT
    status, _ = admin.call("DELETE", "/admin/teams/budgets/limits")
    assert status == 204
