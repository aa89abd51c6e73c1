"""`ec2jobs submit --env` (as `sky launch --env`: NAME from your environment, NAME=VALUE, an env the YAML leaves
without a value must be filled or the CLI refuses before submitting) and `ec2jobs tokens list|revoke`, against the
fake API of test_cli.py."""

# ruff: noqa: F811 - the fixtures api and run come from test_cli.py and are parameters here

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ec2jobs import cli
from tests.unit.test_cli import FakeApi, _task, api, run  # noqa: F401 - pytest fixtures

SUPPLIED = """\
name: train
envs:
  HF_TOKEN:
  EPOCHS: 3
run: python train.py
"""


def _posted(fake: FakeApi) -> list[Any]:
    return [body for method, path, _, body in fake.requests if (method, path) == ("POST", "/jobs")]


def test_an_env_without_a_value_is_refused_before_submitting(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    result = run("submit", _task(tmp_path, SUPPLIED))
    assert result.code == 2
    assert "no value for env HF_TOKEN" in result.err
    assert "--env HF_TOKEN" in result.err
    assert api.requests == []  # nothing reached the API, not even the provider lookup


def test_env_name_takes_the_value_from_the_environment(
    api: FakeApi, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.add_provider()
    monkeypatch.setenv("HF_TOKEN", "hf_from_my_shell_123")
    result = run("submit", _task(tmp_path, SUPPLIED), "--env", "HF_TOKEN")
    assert result.code == 0, result.err
    (body,) = _posted(api)
    assert body["envs"] == {"HF_TOKEN": "hf_from_my_shell_123", "EPOCHS": 3}
    assert "hf_from_my_shell_123" not in result.out + result.err


def test_env_name_value_overrides_and_adds(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    task = _task(tmp_path, SUPPLIED)
    result = run("submit", task, "--env", "HF_TOKEN=hf_x=y", "--env", "EPOCHS=5", "--env", "EXTRA=")
    assert result.code == 0, result.err
    assert _posted(api)[0]["envs"] == {"HF_TOKEN": "hf_x=y", "EPOCHS": "5", "EXTRA": ""}
    plain = _task(tmp_path, "run: echo hi\n", "plain.yaml")
    assert run("submit", plain, "--env", "A=1").code == 0
    assert _posted(api)[1]["envs"] == {"A": "1"}
    assert run("submit", plain).code == 0
    assert "envs" not in _posted(api)[2]  # no --env, no envs: the spec as written


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--env", "NOT_SET_ANYWHERE_42"], "NOT_SET_ANYWHERE_42 is not set in your environment"),
        (["--env", "1BAD=x"], "an env name is letters, digits and '_'"),
        (["--env", "=x"], "an env name is letters, digits and '_'"),
    ],
)
def test_bad_env_options_are_usage_errors(
    api: FakeApi, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: str
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE_42", raising=False)
    api.add_provider()
    result = run("submit", _task(tmp_path, "run: echo hi\n"), *argv)
    assert result.code == 2
    assert expected in result.err
    assert api.requests == []


def test_envs_that_are_not_a_mapping_are_a_usage_error(api: FakeApi, run: Any, tmp_path: Path) -> None:
    result = run("submit", _task(tmp_path, "envs: [A, B]\nrun: echo\n"), "--env", "A=1")
    assert (result.code, "envs must be a mapping" in result.err) == (2, True)


def test_an_env_value_never_appears_in_an_error_line(api: FakeApi, run: Any, tmp_path: Path) -> None:
    api.add_provider()
    secret = "hf_very_secret_value_987"
    result = run("submit", _task(tmp_path, "run: echo hi\n"), "--env", f"HF_TOKEN={secret}", "--provider", secret)
    assert result.code == 1  # the fake API's 404 names the provider id it was given
    assert secret not in result.err
    assert "<redacted>" in result.err


# -- tokens ------------------------------------------------------------------------------------------------------

LISTED = [
    {"token_id": "tok-aaaaaaaaaaaa", "prefix": "ej_Abc12", "label": "laptop", "created_at": "2026-11-01T00:00:00+00:00",
     "expires_at": "2027-01-30T00:00:00+00:00", "expired": False, "current": True},
    {"token_id": "tok-bbbbbbbbbbbb", "prefix": "ej_Xyz89", "label": "ci", "created_at": "2026-01-01T00:00:00+00:00",
     "expires_at": "2026-04-01T00:00:00+00:00", "expired": True, "current": False},
]  # fmt: skip


def test_tokens_list_shows_ids_prefixes_and_expiry(api: FakeApi, run: Any) -> None:
    api.tokens = [dict(t) for t in LISTED]
    result = run("tokens", "list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["TOKEN", "ID", "PREFIX", "LABEL", "CREATED", "EXPIRES", "STATE"]
    assert "tok-aaaaaaaaaaaa  ej_Abc12…" in lines[1]
    assert lines[1].endswith("valid (this one)")
    assert lines[2].endswith("expired")
    assert run("tokens", "list", "--json").out.count("tok-") == 2
    api.tokens = []
    assert run("tokens", "list").out == "no tokens\n"


def test_tokens_revoke(api: FakeApi, run: Any) -> None:
    api.tokens = [dict(t) for t in LISTED]
    result = run("tokens", "revoke", "tok-bbbbbbbbbbbb")
    assert result.code == 0
    assert result.out.startswith("revoked token tok-bbbbbbbbbbbb")
    assert [t["token_id"] for t in api.tokens] == ["tok-aaaaaaaaaaaa"]
    again = run("tokens", "revoke", "tok-bbbbbbbbbbbb")
    assert again.code == 1
    assert "no such token" in again.err


def test_the_package_keeps_its_public_names() -> None:
    """`ec2jobs.cli:main` is the console script (pyproject.toml); the split package keeps the old module's names."""
    for name in ("main", "build_parser", "resolve_config", "read_env_file", "write_env_file", "UsageError", "job_cost"):
        assert callable(getattr(cli, name)), name
