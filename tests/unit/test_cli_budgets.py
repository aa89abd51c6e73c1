"""`ec2jobs usage` and `ec2jobs limits show|set|clear` (docs/budgets.md), against the fake API of test_cli.py with
the budget routes added."""

# ruff: noqa: F811 - the fixtures api and run come from test_cli.py and are parameters here

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_cli import FakeApi, api, run  # noqa: F401 - pytest fixtures

USAGE = {
    "team_id": "vision",
    "month": "2026-12",
    "spent_usd": 618.3105,
    "reserved_usd": 688.24,
    "budget_usd": 1320.0,
    "remaining_usd": 13.4495,
    "active_jobs": 2,
    "queued_jobs": 1,
    "gpu_hours_by_type": {"A100": 6.6667},
    "jobs_by_state": {"SUCCEEDED": 14, "FAILED": 2},
    "providers": [{"provider_id": "prov-1", "spent_usd": 618.3105, "jobs": 16}],
}
NO_LIMITS = {
    "monthly_budget_usd": None,
    "max_concurrent_instances": None,
    "max_concurrent_gpus": None,
    "max_gpus_by_type": {},
    "max_hourly_price_usd": None,
    "max_queue_minutes": 1440,
}


@pytest.fixture
def budgets(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The budget routes on the fake API: the team's usage and limits; an admin's PUT and DELETE."""
    state: dict[str, Any] = {"limits": dict(NO_LIMITS), "queries": []}
    route = api.route

    def budget_route(method: str, parts: list[str], query: dict[str, str], headers: Any, body: Any) -> Any:
        match method, parts:
            case "GET", ["usage"]:
                state["queries"].append(query)
                return 200, ({"teams": [USAGE]} if query.get("team_id") is None and state.get("admin") else USAGE)
            case "GET", ["limits"] | ["admin", "teams", _, "limits"]:
                return 200, state["limits"]
            case "PUT", ["admin", "teams", team, "limits"]:
                if not state.get("admin"):
                    return 403, {"code": "FORBIDDEN", "message": "this route needs an admin token"}
                state["limits"] = NO_LIMITS | {k: v for k, v in body.items() if v is not None}
                state["team"] = team
                return 200, state["limits"]
            case "DELETE", ["admin", "teams", _, "limits"]:
                state["limits"] = dict(NO_LIMITS)
                return 204, None
        return route(method, parts, query, headers, body)

    monkeypatch.setattr(api, "route", budget_route)
    return state


def test_usage_shows_the_month_with_budget_left(budgets: dict[str, Any], run: Any) -> None:
    result = run("usage", "--month", "2026-12")
    assert result.code == 0, result.err
    assert budgets["queries"] == [{"month": "2026-12"}]
    lines = result.out.splitlines()
    assert lines[0] == "team vision, 2026-12 (UTC)"
    assert lines[1].split() == ["SPENT", "RESERVED", "BUDGET", "REMAINING", "ACTIVE", "JOBS", "QUEUED", "JOBS"]
    assert lines[2].split() == ["$618.31", "$688.24", "$1,320.00", "$13.45", "2", "1"]
    assert "jobs ended: 2 FAILED, 14 SUCCEEDED" in result.out
    assert "GPU-hours: A100 6.67" in result.out
    assert "prov-1" in result.out


def test_an_admin_sees_every_team(budgets: dict[str, Any], run: Any) -> None:
    budgets["admin"] = True
    result = run("usage")
    assert result.code == 0, result.err
    assert result.out.startswith("team vision, 2026-12 (UTC)")
    assert '"teams"' in run("usage", "--json").out


def test_limits_set_sends_every_limit_and_clear_removes_them(budgets: dict[str, Any], run: Any) -> None:
    refused = run("limits", "set", "--team", "vision", "--monthly-budget", "1320")
    assert refused.code == 1
    assert "admin token" in refused.err
    budgets["admin"] = True
    result = run(
        "limits", "set", "--team", "vision", "--monthly-budget", "1320", "--max-gpus-of", "A100=8",
        "--max-gpus-of", "H100=16", "--max-instances", "10", "--max-queue-minutes", "60",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert budgets["team"] == "vision"
    assert budgets["limits"]["monthly_budget_usd"] == 1320.0
    assert budgets["limits"]["max_gpus_by_type"] == {"A100": 8, "H100": 16}
    assert budgets["limits"]["max_concurrent_instances"] == 10
    assert budgets["limits"]["max_queue_minutes"] == 60
    shown = run("limits", "show")
    assert "monthly_budget_usd" in shown.out
    assert "1320.0" in shown.out
    assert run("limits", "clear", "--team", "vision").code == 0
    assert run("limits", "show").out.startswith("no limits (jobs wait at most 1440 minutes when queued)")
    bad = run("limits", "set", "--team", "vision", "--max-gpus-of", "A100")
    assert bad.code == 2
    assert "write TYPE=COUNT" in bad.err


def test_limits_set_from_a_file_sends_per_provider_limits(budgets: dict[str, Any], run: Any, tmp_path: Any) -> None:
    budgets["admin"] = True
    path = tmp_path / "limits.yaml"
    path.write_text("monthly_budget_usd: 5000\nproviders:\n  prov-1: {max_concurrent_gpus: 8}\n")
    result = run("limits", "set", "--team", "vision", "--file", str(path))
    assert result.code == 0, result.err
    assert budgets["limits"]["providers"] == {"prov-1": {"max_concurrent_gpus": 8}}
    path.write_text("- not a mapping\n")
    assert run("limits", "set", "--team", "vision", "--file", str(path)).code == 2
