"""The job wrapper's renderer: safe substitution, deterministic bytes, nothing of the job's own text in user data,
and well under EC2's 16 KB. Running the script itself: test_job_wrapper.py; the job's text: test_bundle.py."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core import userdata
from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import TaskSpec
from controlplane.core.userdata import USER_DATA_LIMIT, WrapperConfig, check_spec_fits, decode, render, render_script

BASH = shutil.which("bash") or "/bin/bash"
JOB_ID = "job-0123456789abcdef0123"
TEAM_ID = "team-42"
INSTANCE_TYPE = "g5.xlarge"


def _key_pair(comment: str) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


HOST_PRIVATE, HOST_PUBLIC = _key_pair(f"ec2jobs-host-{JOB_ID}")
_, RELAY_PUBLIC = _key_pair("ec2jobs-relay-team-42")


def make_config(**overrides: Any) -> WrapperConfig:
    values: dict[str, Any] = {
        "job_id": JOB_ID,
        "team_id": TEAM_ID,
        "instance_type": INSTANCE_TYPE,
        "max_runtime_seconds": 3600,
        "ssh_authorized_key": RELAY_PUBLIC,
        "host_private_key": HOST_PRIVATE,
        "host_public_key": HOST_PUBLIC,
    }
    return WrapperConfig(**(values | overrides))


def bash_syntax_ok(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, "-n"], input=script, capture_output=True, text=True, timeout=10, check=False)


def test_user_data_is_a_bash_script_well_under_the_limit() -> None:
    data = render(make_config())
    assert len(data) <= USER_DATA_LIMIT - 2048, len(data)  # room for longer keys, whatever the job
    script = decode(data)
    assert script.startswith("#!/bin/bash\n")
    assert bash_syntax_ok(script).returncode == 0
    if len(script.encode()) > USER_DATA_LIMIT:
        assert data[:2] == b"\x1f\x8b"  # gzipped only when the plain script is over EC2's limit (cloud-init reads both)


def test_render_is_deterministic() -> None:
    assert render(make_config()) == render(make_config())


def test_placeholders_are_all_substituted() -> None:
    assert "@@" not in render_script(make_config())


@settings(max_examples=200, deadline=None)
@given(body=st.text(alphabet=st.sampled_from(["a", "\n", "E", "O", "F", "_", "x"]), max_size=200))
def test_heredoc_delimiter_is_never_a_line_of_the_body(body: str) -> None:
    """Even when the body contains the delimiter the renderer would have chosen, the delimiter differs from every
    line; and it depends only on the body (determinism)."""
    first = userdata._delimiter(body)
    hostile = body + "\n" + first + "\n"
    chosen = userdata._delimiter(hostile)
    assert chosen not in hostile.split("\n")
    assert first not in body.split("\n")
    assert userdata._delimiter(hostile) == chosen


def test_never_traces_the_script() -> None:
    """The script holds the host private key: no xtrace anywhere."""
    script = render_script(make_config())
    assert "set -x" not in script
    assert "xtrace" not in script


def test_deadline_minutes_round_up() -> None:
    assert make_config(max_runtime_seconds=3600, shutdown_grace_seconds=600).shutdown_minutes == 70
    assert make_config(max_runtime_seconds=61, shutdown_grace_seconds=0).shutdown_minutes == 2
    assert "\nshutdown -h +70\n" in render_script(make_config(max_runtime_seconds=3600))


def test_the_users_are_in_the_script() -> None:
    script = render_script(make_config(ssh_user="ec2-user", relay_user="ec2jobs-relay"))
    assert "\nJOB_USER=ec2-user\n" in script
    assert "\nRELAY_USER=ec2jobs-relay\n" in script


def test_repr_never_shows_the_host_private_key() -> None:
    config = make_config()
    key_line = HOST_PRIVATE.splitlines()[1]
    for text in (repr(config), str(config), f"{config}", f"{config!r}"):
        assert key_line not in text
        assert "PRIVATE KEY" not in text
        assert JOB_ID in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_runtime_seconds", 0),
        ("drain_timeout_seconds", -1),
        ("bundle_timeout_seconds", 0),
        ("shutdown_grace_seconds", True),
        ("ssh_user", "ubuntu; rm -rf /"),
        ("ssh_user", "../root"),
        ("relay_user", "relay user"),
        ("ssh_authorized_key", "ssh-ed25519 AAAA\nssh-rsa BBBB"),
        ("host_public_key", ""),
        ("host_private_key", "not a key"),
    ],
)
def test_malformed_launch_configuration_is_a_programming_error(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        make_config(**{field: value})


@pytest.mark.parametrize(
    "fields",
    [
        {"run": "echo a\0b"},
        {"run": "true", "setup": "\0"},
        {"run": "true", "envs": {"A": "x\0y"}},
        {"run": "true", "envs": {"BAD-NAME": "x"}},
        {"run": "lone surrogate \ud800"},
    ],
)
def test_text_a_shell_cannot_carry_is_an_invalid_spec_at_submission(fields: dict[str, Any]) -> None:
    try:
        spec = TaskSpec.model_validate(fields)
    except ValueError:
        return  # the spec model refuses it first: also a 400 at submission
    with pytest.raises(InvalidSpec):
        check_spec_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, spec)


def test_a_large_job_is_not_a_user_data_problem_any_more() -> None:
    """200 KB of run text is fine: it travels in the start bundle."""
    spec = TaskSpec.model_validate({"run": "echo x\n" * 30000})
    check_spec_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, spec)
