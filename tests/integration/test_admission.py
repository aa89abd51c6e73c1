"""Budgets that cannot be overspent (docs/budgets.md), against the emulator: concurrent submissions never overshoot a
limit, a job is queued with the reason and admitted when another ends, a job that can never fit is refused with the
figures, usage equals the sum of the jobs' costs, queued jobs can be cancelled or time out, and only admin tokens
set limits."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest

from controlplane.core.admission import Limits
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import JobRequest, utcnow
from tests.integration.conftest import ControlPlane, Tenant, module_control_plane

# The admission sweep reads every team's ledger: tables of this module's own.
control_plane = module_control_plane()

TASK: dict[str, Any] = {"resources": {"cpus": "2"}, "run": "sleep 1000", "max_runtime_minutes": 60}


def _services() -> Any:
    from controlplane.handlers import container

    return container.get()


def _worst_case(tenant: Tenant, task: dict[str, Any] = TASK) -> Decimal:
    """What one TASK job reserves (its instance's on-demand price × 70 minutes)."""
    from controlplane.core import catalog
    from controlplane.core.markets import submission_pricing
    from controlplane.core.spec import TaskSpec

    spec = TaskSpec.model_validate(task)
    selection = catalog.get().select_for(spec.resources, "us-east-1")
    pricing = submission_pricing(False, selection.instance_type, selection.hourly_price)
    admission = _services().admission
    draft = _draft(tenant, spec, selection.instance_type, pricing.on_demand_price)
    return Decimal(admission.request_for(draft, Limits()).claim.reserved)


def _draft(tenant: Tenant, spec: Any, instance_type: str, price: float | None) -> Any:
    from controlplane.core.models import Job

    now = utcnow()
    return Job(job_id="job-0", team_id=tenant.team_id, provider_id=tenant.provider_id, region="us-east-1", spec=spec,
               instance_type=instance_type, on_demand_price=price, created_at=now, updated_at=now)  # fmt: skip


def _admin_token() -> str:
    return str(_services().teams.issue_admin().token)


def _set_limits(cp: ControlPlane, team_id: str, **limits: Any) -> None:
    answer = cp.call("PUT", f"/admin/teams/{team_id}/limits", _admin_token(), body=limits)
    assert answer.status == 200, answer.body


def _submit(cp: ControlPlane, tenant: Tenant, **extra: Any) -> Any:
    return cp.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id} | extra)


def _job(job_id: str) -> Any:
    from controlplane.handlers import container

    return container.job_store().get(job_id)


def _sweep_later(minutes: int) -> dict[str, int]:
    """The admission sweep as it runs `minutes` from now (the reconciler's, once a minute)."""
    admission = _services().admission
    admission.clock = lambda: utcnow() + dt.timedelta(minutes=minutes)
    try:
        return dict(admission.sweep())
    finally:
        admission.clock = utcnow


def _finish(job_id: str, seconds: int) -> Any:
    """Run a PENDING job through to SUCCEEDED as the workflow and the relay would, `seconds` after its launch."""
    from controlplane.handlers import container

    jobs = container.job_store()
    jobs.transition(job_id, JobStatus.LAUNCHING, expected=JobStatus.PENDING)
    launched = utcnow() - dt.timedelta(seconds=seconds)
    jobs.transition(job_id, JobStatus.PROVISIONING, fields={"launched_at": launched, "instance_id": "i-0abc"})
    return jobs.transition(job_id, JobStatus.SUCCEEDED, fields={"exit_code": 0, "ended_at": utcnow()})


def test_concurrent_submissions_never_overshoot_the_budget(control_plane: ControlPlane, tenant: Tenant) -> None:
    worst = _worst_case(tenant)
    _set_limits(control_plane, tenant.team_id, monthly_budget_usd=float(worst * 3 + Decimal("0.000001")))
    request = JobRequest.model_validate(TASK | {"provider_id": tenant.provider_id})
    results: list[Any] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            results.append(_services().jobs.submit(tenant.team_id, request).job)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    statuses = sorted(str(job.status) for job in results)
    assert statuses == ["PENDING"] * 3 + ["QUEUED"] * 7
    ledger = _services().admission.store.ledger(tenant.team_id)
    assert len(ledger.holds) == 3
    assert len(ledger.queue) == 7
    month = utcnow().strftime("%Y-%m")
    assert ledger.reserved(month) <= worst * 3 + Decimal("0.000001")


def test_a_budget_for_two_admits_two_queues_the_third_and_admits_it_when_one_ends(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    worst = _worst_case(tenant)
    _set_limits(control_plane, tenant.team_id, monthly_budget_usd=float(worst * Decimal("2.5")))
    first, second, third = (_submit(control_plane, tenant) for _ in range(3))
    assert first.status == second.status == third.status == 202
    assert [first.json()["status"], second.json()["status"]] == ["PENDING", "PENDING"]
    queued = third.json()
    assert queued["status"] == "QUEUED"
    shown = control_plane.call("GET", f"/jobs/{queued['job_id']}", tenant.token).json()
    assert shown["status"] == "QUEUED"
    assert "budget" in shown["status_detail"]
    assert _job(queued["job_id"]).execution_arn is None  # queued: no workflow, nothing held

    ended = _finish(first.json()["job_id"], seconds=120)  # the store's listener books it and admits the third
    admitted = _job(queued["job_id"])
    assert admitted.status == JobStatus.PENDING
    assert admitted.execution_arn
    assert admitted.execution_arn.endswith(f"{queued['job_id']}-admitted")
    usage = control_plane.call("GET", "/usage", tenant.token).json()
    assert Decimal(str(usage["spent_usd"])) == Decimal(str(ended.cost_estimate))
    assert usage["jobs_by_state"] == {"SUCCEEDED": 1}
    assert usage["active_jobs"] == 2
    assert usage["queued_jobs"] == 0
    assert Decimal(str(usage["reserved_usd"])) == worst * 2


def test_a_job_that_can_never_fit_is_refused_with_the_limit_and_the_figures(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    _set_limits(control_plane, tenant.team_id, monthly_budget_usd=0.01)
    answer = _submit(control_plane, tenant)
    assert answer.status == 422
    body = answer.json()
    assert body["code"] == "OVER_LIMIT"
    assert "over the team's whole monthly budget of $0.01 by $" in body["message"]
    _set_limits(control_plane, tenant.team_id, max_hourly_price_usd=0.0001)
    assert "max_hourly_price_usd of $0.01/h" in _submit(control_plane, tenant).json()["message"]


def test_usage_equals_the_sum_of_the_jobs_costs(control_plane: ControlPlane, tenant: Tenant) -> None:
    ids = [_submit(control_plane, tenant).json()["job_id"] for _ in range(3)]
    costs = [Decimal(str(_finish(job_id, seconds=60 * (i + 2)).cost_estimate)) for i, job_id in enumerate(ids)]
    cancelled = _submit(control_plane, tenant).json()["job_id"]
    assert control_plane.call("POST", f"/jobs/{cancelled}/cancel", tenant.token).status == 200
    usage = control_plane.call("GET", "/usage", tenant.token).json()
    assert Decimal(str(usage["spent_usd"])) == sum(costs)
    assert usage["jobs_by_state"] == {"CANCELLED": 1, "SUCCEEDED": 3}
    assert usage["providers"] == [{"provider_id": tenant.provider_id, "spent_usd": float(sum(costs)), "jobs": 4}]
    assert usage["reserved_usd"] == 0
    assert usage["budget_usd"] is None
    assert usage["remaining_usd"] is None


def test_a_queued_job_can_be_cancelled_and_leaves_the_queue(control_plane: ControlPlane, tenant: Tenant) -> None:
    _set_limits(control_plane, tenant.team_id, max_concurrent_instances=1)
    running = _submit(control_plane, tenant).json()
    queued = _submit(control_plane, tenant).json()
    assert queued["status"] == "QUEUED"
    assert queued["status_detail"] == "1 of 1 concurrent instances in use"
    answer = control_plane.call("POST", f"/jobs/{queued['job_id']}/cancel", tenant.token)
    assert answer.status == 200
    assert answer.json()["status"] == "CANCELLED"
    assert answer.json()["terminated_instances"] == []
    assert _services().admission.store.ledger(tenant.team_id).queue == {}
    _finish(running["job_id"], seconds=60)
    assert _job(queued["job_id"]).status == JobStatus.CANCELLED  # ended stays ended: never admitted afterwards


def test_a_job_queued_past_its_max_queue_minutes_fails_queue_timeout(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    _set_limits(control_plane, tenant.team_id, max_concurrent_instances=1, max_queue_minutes=30)
    _submit(control_plane, tenant)
    short = _submit(control_plane, tenant, max_queue_minutes=5).json()
    longer = _submit(control_plane, tenant, max_queue_minutes=600).json()  # bounded by the team's 30
    admission = _services().admission
    counts = _sweep_later(minutes=10)
    assert counts["expired"] == 1
    failed = _job(short["job_id"])
    assert failed.status == JobStatus.FAILED
    assert failed.failure_reason == FailureReason.QUEUE_TIMEOUT
    assert "waited 5 minutes in the queue" in (failed.failure_message or "")
    assert _job(longer["job_id"]).status == JobStatus.QUEUED
    deadline = admission.store.ledger(tenant.team_id).queue[longer["job_id"]].queue_deadline
    assert dt.datetime.fromisoformat(deadline) <= utcnow() + dt.timedelta(minutes=30)


def test_the_sweep_books_a_job_whose_release_was_lost(control_plane: ControlPlane, tenant: Tenant) -> None:
    from controlplane.handlers import container

    _set_limits(control_plane, tenant.team_id, max_concurrent_instances=1)
    first = _submit(control_plane, tenant).json()
    second = _submit(control_plane, tenant).json()
    store = container.job_store()
    store.listener = None  # a Lambda that died right after the job's terminal write: nothing released
    store.transition(first["job_id"], JobStatus.CANCELLED)
    assert _services().admission.store.ledger(tenant.team_id).holds.keys() == {first["job_id"]}
    counts = _services().admission.sweep()
    assert counts["released"] == 1  # booked, and the queue behind it admitted at once
    assert _job(second["job_id"]).status == JobStatus.PENDING


def test_only_admin_tokens_set_limits_and_admin_tokens_act_for_no_team(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    assert control_plane.call("PUT", f"/admin/teams/{tenant.team_id}/limits", tenant.token, body={}).status == 403
    admin = _admin_token()
    for method, path in (("GET", "/jobs"), ("GET", "/providers"), ("GET", "/limits")):
        answer = control_plane.call(method, path, admin)
        assert (answer.status, answer.json()["code"]) == (403, "FORBIDDEN"), path
    assert control_plane.call("GET", "/usage", tenant.token, query={"team_id": tenant.team_id}).status == 200  # its own
    assert control_plane.call("GET", "/usage", tenant.token, query={"team_id": "someone-else"}).status == 403
    set_to = {"monthly_budget_usd": 100.0, "max_gpus_by_type": {"a100": 8}}
    stored = control_plane.call("PUT", f"/admin/teams/{tenant.team_id}/limits", admin, body=set_to).json()
    assert stored["max_gpus_by_type"] == {"A100": 8}
    assert control_plane.call("GET", "/limits", tenant.token).json() == stored
    assert _submit(control_plane, tenant).json()["status"] == "PENDING"  # an open claim this month
    everyone = control_plane.call("GET", "/usage", admin).json()
    assert tenant.team_id in {team["team_id"] for team in everyone["teams"]}  # it has an open claim or a report
    bad = control_plane.call("PUT", f"/admin/teams/{tenant.team_id}/limits", admin, body={"monthly_budget_usd": -1})
    assert bad.status == 422
    assert control_plane.call("DELETE", f"/admin/teams/{tenant.team_id}/limits", admin).status == 204
    assert control_plane.call("GET", "/limits", tenant.token).json()["monthly_budget_usd"] is None


def test_a_console_submission_that_does_not_fit_is_queued_and_its_execution_ends_quietly(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    from controlplane.core.errors import JobNotActive
    from controlplane.handlers import container

    _set_limits(control_plane, tenant.team_id, max_concurrent_instances=1)
    _submit(control_plane, tenant)
    raw = TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id}
    container.use(None)
    intake = container.pipeline().intake
    with pytest.raises(JobNotActive, match="is QUEUED"):
        intake.validate(raw, "console-run-1", "arn:aws:states:us-east-1:123456789012:execution:jobs:console-run-1")
    (queued,) = _services().admission.store.ledger(tenant.team_id).queue
    assert _job(queued).status == JobStatus.QUEUED
    assert _job(queued).source == "console"


def test_a_providers_limits_queue_its_jobs_while_another_providers_run(
    control_plane: ControlPlane, tenant: Tenant, provider_keys: Any
) -> None:
    from tests.integration.conftest import register_provider

    other = register_provider(control_plane, tenant.token, provider_keys(), name="second")
    _set_limits(control_plane, tenant.team_id, providers={tenant.provider_id: {"max_concurrent_instances": 1}})
    assert _submit(control_plane, tenant).json()["status"] == "PENDING"
    queued = _submit(control_plane, tenant).json()
    assert queued["status"] == "QUEUED"
    assert queued["status_detail"] == f"1 of 1 concurrent instances in use on provider {tenant.provider_id}"
    elsewhere = control_plane.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": other})
    assert elsewhere.json()["status"] == "PENDING"  # the first provider's limit does not hold the second's jobs


def test_a_team_whose_ledger_is_full_is_told_to_wait(
    control_plane: ControlPlane, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane.service import admission

    monkeypatch.setattr(admission, "MAX_LEDGER_ENTRIES", 2)
    assert _submit(control_plane, tenant).status == 202
    assert _submit(control_plane, tenant).status == 202
    full = _submit(control_plane, tenant)
    assert (full.status, full.json()["code"]) == (429, "QUEUE_FULL")
    assert "2 jobs admitted or queued" in full.json()["message"]


def test_a_console_submission_that_can_never_fit_is_refused_with_the_figures(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    from controlplane.core.errors import InvalidSubmission
    from controlplane.handlers import container

    _set_limits(control_plane, tenant.team_id, monthly_budget_usd=0.01)
    raw = TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id}
    container.use(None)
    intake = container.pipeline().intake
    with pytest.raises(InvalidSubmission, match=r"over the team's whole monthly budget of \$0\.01 by \$"):
        intake.validate(raw, "console-run-2", "arn:aws:states:us-east-1:123456789012:execution:jobs:console-run-2")
    assert _services().admission.store.ledger(tenant.team_id).queue == {}


def test_the_sweep_starts_an_admitted_job_whose_workflow_did_not_start(
    control_plane: ControlPlane, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controlplane.core.errors import UpstreamUnavailable

    _set_limits(control_plane, tenant.team_id, max_concurrent_instances=1)
    first = _submit(control_plane, tenant).json()
    second = _submit(control_plane, tenant).json()
    admission = _services().admission
    real = admission.starter

    class Failing:
        def admit(self, job: Any) -> str:
            raise UpstreamUnavailable("Step Functions refused (injected)")

    monkeypatch.setattr(type(admission), "starter", property(lambda _self: Failing()))
    _finish(first["job_id"], seconds=60)  # admitting the second fails to start its workflow (logged, not raised)
    stuck = _job(second["job_id"])
    assert stuck.status == JobStatus.PENDING
    assert stuck.execution_arn is None
    monkeypatch.setattr(type(admission), "starter", property(lambda _self: real))
    counts = _sweep_later(minutes=2)
    assert counts["admitted"] == 1
    started = _job(second["job_id"])
    assert started.execution_arn
    assert started.execution_arn.endswith(f"{second['job_id']}-admitted")
