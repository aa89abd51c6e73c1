"""core/admission.py: worst cases, the fit decision, strict queue order, and the ledger's bookkeeping."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controlplane.core.admission import (
    Claim,
    Ledger,
    Limits,
    Request,
    blocked_by,
    decide,
    money,
    never_fits,
    next_admissible,
    worst_case,
)

MONTH = "2026-12"


def _request(job_id: str, reserved: str = "10", gpus: int = 0, gpu_type: str | None = None, **kw: object) -> Request:
    claim = Claim(month=MONTH, reserved=Decimal(reserved), gpus=gpus, gpu_type=gpu_type)
    return Request(job_id=job_id, claim=claim, hourly_price=Decimal("1"), queued_at=f"2026-12-01T00:00:0{job_id[-1]}",
                   **kw)  # type: ignore[arg-type]  # fmt: skip


def test_the_worst_case_is_price_times_runtime_plus_grace_times_attempts() -> None:
    # $32.77/h (p4d.24xlarge), 60 min + 10 min grace, 3 attempts: 32.77 × 70/60 × 3 = 114.695
    assert worst_case(32.77, 60, 600, 3) == Decimal("114.695")
    assert worst_case(1.0, 60, 601, 1) == money(Decimal(71) / Decimal(60))  # a started grace minute counts whole
    assert worst_case(None, 60, 600, 1) == 0


def test_a_budget_admits_exactly_what_fits_and_queues_the_rest_with_the_figures() -> None:
    limits = Limits(monthly_budget_usd=25)
    ledger = Ledger()
    first, ledger = decide(limits, ledger, _request("job-1"))
    second, ledger = decide(limits, ledger, _request("job-2"))
    third, ledger = decide(limits, ledger, _request("job-3"))
    assert first.admitted
    assert second.admitted
    assert not third.admitted
    assert third.reason == (
        "its worst case is $10.00 and $5.00 of the 2026-12 budget of $25.00 is left ($0.00 spent, $20.00 reserved by "
        "running jobs)"
    )
    assert set(ledger.holds) == {"job-1", "job-2"}
    assert set(ledger.queue) == {"job-3"}
    ledger = ledger.ended("job-1", Decimal("3.25"))  # measured cost replaces the $10 reservation
    assert ledger.spent[MONTH] == Decimal("3.25")
    assert ledger.reserved(MONTH) == Decimal("10")
    head = next_admissible(limits, ledger)  # 3.25 spent + 10 reserved + 10 ≤ 25
    assert head is not None
    assert head.job_id == "job-3"
    assert next_admissible(Limits(monthly_budget_usd=23), ledger) is None  # 23.25 > 23: spend counts too


def test_the_queue_is_strict_a_blocked_head_blocks_smaller_jobs_behind_it() -> None:
    limits = Limits(max_concurrent_gpus=8)
    ledger = Ledger(holds={"job-0": Claim(MONTH, Decimal(0), gpus=4, gpu_type="A100")})
    big = _request("job-1", gpus=8, gpu_type="A100")
    small = _request("job-2", gpus=1, gpu_type="A100")
    decision, ledger = decide(limits, ledger, big)
    assert not decision.admitted
    assert decision.reason == "4 of 8 concurrent GPUs in use; it needs 8"
    decision, ledger = decide(limits, ledger, small)
    assert not decision.admitted
    assert "queued ahead" in (decision.reason or "")
    assert next_admissible(limits, ledger) is None  # the head (8 GPUs) does not fit: nobody overtakes it


def test_a_higher_priority_goes_first() -> None:
    limits = Limits(max_concurrent_instances=1)
    ledger = Ledger(holds={"job-0": Claim(MONTH, Decimal(0))})
    _, ledger = decide(limits, ledger, _request("job-1"))
    _, ledger = decide(limits, ledger, _request("job-2", priority=5))
    assert [r.job_id for r in ledger.ordered_queue()] == ["job-2", "job-1"]


def test_gpu_limits_by_type_count_only_that_type() -> None:
    limits = Limits(max_gpus_by_type={"a100": 8})
    assert limits.max_gpus_by_type == {"A100": 8}
    ledger = Ledger(holds={"job-0": Claim(MONTH, Decimal(0), gpus=8, gpu_type="H100")})
    assert blocked_by(limits, ledger, _request("job-1", gpus=8, gpu_type="A100")) is None
    ledger = ledger.admitted(_request("job-1", gpus=8, gpu_type="A100"))
    assert blocked_by(limits, ledger, _request("job-2", gpus=1, gpu_type="A100")) == (
        "8 of 8 concurrent A100 GPUs in use; it needs 1"
    )


@pytest.mark.parametrize(
    ("limits", "request_", "words"),
    [
        (
            Limits(monthly_budget_usd=5),
            _request("job-1", "10"),
            "over the team's whole monthly budget of $5.00 by $5.00",
        ),
        (
            Limits(max_hourly_price_usd=0.5),
            _request("job-1"),
            "over the team's max_hourly_price_usd of $0.50/h by $0.50",
        ),
        (Limits(max_concurrent_gpus=4), _request("job-1", gpus=8, gpu_type="A100"), "needs 8 GPUs, more than"),
        (Limits(max_gpus_by_type={"H100": 4}), _request("job-1", gpus=8, gpu_type="H100"), "limit of 4 H100"),
        (Limits(max_concurrent_instances=0), _request("job-1"), "max_concurrent_instances is 0"),
    ],
)
def test_a_job_that_can_never_fit_is_refused_with_the_limit_and_the_figures(
    limits: Limits, request_: Request, words: str
) -> None:
    reason = never_fits(limits, request_)
    assert reason is not None
    assert words in reason


def test_no_limits_admits_everything() -> None:
    assert not Limits().limited
    decision, _ = decide(Limits(), Ledger(), _request("job-1", "1000000"))
    assert decision.admitted


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        Limits(monthly_budget_usd=-1)
    with pytest.raises(ValidationError):
        Limits(max_gpus_by_type={"A100": -1})
    with pytest.raises(ValidationError):
        Limits.model_validate({"monthly_budget": 10})  # a misspelt field is an error, not ignored


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(min_value=0, max_value=100),
    costs=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=12),
    ends=st.lists(st.integers(min_value=0, max_value=11), max_size=12),
)
def test_admitted_worst_cases_never_exceed_the_budget(budget: int, costs: list[int], ends: list[int]) -> None:
    """Whatever arrives and ends in whatever order, spent + reserved stays within the budget."""
    limits = Limits(monthly_budget_usd=budget)
    ledger = Ledger()
    for index, cost in enumerate(costs):
        request = _request(f"job-{index:02d}", str(cost))
        if never_fits(limits, request) is None:
            _, ledger = decide(limits, ledger, request)
        if index < len(ends) and (ended := f"job-{ends[index]:02d}") in ledger.holds:
            ledger = ledger.ended(ended, ledger.holds[ended].reserved / 2)  # a job costs at most its worst case
        while (head := next_admissible(limits, ledger)) is not None:
            ledger = ledger.admitted(head)
        assert ledger.spent.get(MONTH, Decimal(0)) + ledger.reserved(MONTH) <= budget


def test_the_worked_example_of_docs_budgets_md() -> None:
    """docs/budgets.md's table and sentences, figure by figure (the catalog's p4d and p5 prices)."""
    from controlplane.core import catalog

    p4d, p5 = (catalog.get().instances[name].price_per_hour for name in ("p4d.24xlarge", "p5.48xlarge"))
    worst = {
        "a": worst_case(p4d, 120, 900, 1),
        "b": worst_case(p5, 60, 900, 3),
        "c": worst_case(p5, 180, 900, 1),
        "d": worst_case(p5, 10080, 900, 1),
    }
    assert [f"{w:.2f}" for w in worst.values()] == ["73.74", "368.70", "319.54", "16542.34"]
    limits = Limits(monthly_budget_usd=1320)
    ledger = Ledger(spent={MONTH: Decimal(600)})
    decisions = {}
    for job in "abc":
        request = Request(job_id=job, claim=Claim(MONTH, worst[job]), hourly_price=Decimal(1), queued_at=job)
        decisions[job], ledger = decide(limits, ledger, request)
    assert decisions["a"].admitted
    assert decisions["b"].admitted
    assert decisions["c"].reason == (
        "its worst case is $319.54 and $277.56 of the 2026-12 budget of $1320.00 is left ($600.00 spent, $442.44 "
        "reserved by running jobs)"
    )
    refused = Request(job_id="d", claim=Claim(MONTH, worst["d"]), hourly_price=Decimal(1))
    assert never_fits(limits, refused) == (
        "its worst case is $16542.34, over the team's whole monthly budget of $1320.00 by $15222.34: lower "
        "max_runtime_minutes or job_recovery's restarts"
    )
    measured = money(Decimal(str(p4d)) * 50 / 60)
    assert f"{measured:.2f}" == "27.31"
    ledger = ledger.ended("a", measured)
    head = next_admissible(limits, ledger)
    assert head is not None
    assert head.job_id == "c"
    assert f"{ledger.spent[MONTH] + ledger.reserved(MONTH) + worst['c']:.2f}" == "1315.55"


def test_a_providers_limits_apply_to_its_jobs_on_top_of_the_teams() -> None:
    limits = Limits.model_validate(
        {
            "max_concurrent_instances": 10,
            "providers": {"prov-a": {"max_concurrent_instances": 1, "monthly_budget_usd": 15}},
        }
    )
    on_a = Request(job_id="job-1", claim=Claim(MONTH, Decimal(10), provider_id="prov-a"), hourly_price=Decimal(1))
    on_b = Request(job_id="job-2", claim=Claim(MONTH, Decimal(10), provider_id="prov-b"), hourly_price=Decimal(1))
    decision, ledger = decide(limits, Ledger(), on_a)
    assert decision.admitted
    second_on_a = Request(job_id="job-3", claim=Claim(MONTH, Decimal(1), provider_id="prov-a"), hourly_price=Decimal(1))
    assert blocked_by(limits, ledger, second_on_a) == "1 of 1 concurrent instances in use on provider prov-a"
    assert blocked_by(limits, ledger, on_b) is None  # another provider: only the team's limits
    ledger = ledger.ended("job-1", Decimal(8))
    assert ledger.spent_in(MONTH) == ledger.spent_in(MONTH, "prov-a") == Decimal(8)
    assert ledger.spent_in(MONTH, "prov-b") == 0
    assert blocked_by(limits, ledger, on_a) == (
        "its worst case is $10.00 and $7.00 of the 2026-12 budget of $15.00 is left ($8.00 spent, $0.00 reserved by "
        "running jobs) on provider prov-a"
    )
    expensive = Request(job_id="job-4", claim=Claim(MONTH, Decimal(20), provider_id="prov-a"), hourly_price=Decimal(1))
    assert never_fits(limits, expensive) == (
        "its worst case is $20.00, over provider prov-a's whole monthly budget of $15.00 by $5.00: lower "
        "max_runtime_minutes or job_recovery's restarts"
    )
    with pytest.raises(ValidationError):
        Limits.model_validate({"providers": {"prov-a": {"max_queue_minutes": 5}}})  # a team-wide setting only


def test_a_job_held_by_its_providers_limit_holds_only_that_providers_later_jobs() -> None:
    limits = Limits.model_validate(
        {"max_concurrent_instances": 3, "providers": {"prov-a": {"max_concurrent_instances": 1}}}
    )

    def job(name: str, provider: str) -> Request:
        return Request(job_id=name, claim=Claim(MONTH, Decimal(1), provider_id=provider), hourly_price=Decimal(1),
                       queued_at=name)  # fmt: skip

    _, ledger = decide(limits, Ledger(), job("job-1", "prov-a"))
    waits, ledger = decide(limits, ledger, job("job-2", "prov-a"))
    assert waits.reason == "1 of 1 concurrent instances in use on provider prov-a"
    behind, ledger = decide(limits, ledger, job("job-3", "prov-a"))
    assert behind.reason == "1 earlier job(s) of the team are queued ahead of it"
    other, ledger = decide(limits, ledger, job("job-4", "prov-b"))  # not held by prov-a's limit
    assert other.admitted
    fifth, ledger = decide(limits, ledger, job("job-5", "prov-b"))  # the team's 3 instances are now in use
    assert fifth.admitted
    sixth, ledger = decide(limits, ledger, job("job-6", "prov-b"))
    assert sixth.reason == "3 of 3 concurrent instances in use"
    assert next_admissible(limits, ledger) is None
    ledger = ledger.ended("job-4", Decimal(0))  # a team slot frees, prov-a's does not
    head = next_admissible(limits, ledger)
    assert head is not None
    assert head.job_id == "job-6"  # job-2 and job-3 still wait for prov-a; job-6 is not behind them
