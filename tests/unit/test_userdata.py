"""The job wrapper's renderer: safe substitution, deterministic bytes, the 16 KB EC2 limit (gzip when needed) and
check_fits() at submission agreeing with render() at launch. Running the script itself: test_job_wrapper.py."""

from __future__ import annotations

import base64
import gzip
import random
import shutil
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.core import userdata
from controlplane.core.errors import InvalidSpec
from controlplane.core.userdata import (
    USER_DATA_LIMIT,
    UserDataTooLarge,
    WrapperConfig,
    check_fits,
    decode,
    render,
    render_script,
)

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
        "envs": {"MODEL": "llama", "TRICKY": 'it\'s "$HOME" `id`\nEOF\nünïcødé'},
        "setup": "pip install -r requirements.txt",
        "run": "python train.py --epochs 3",
        "max_runtime_seconds": 3600,
        "ssh_authorized_key": RELAY_PUBLIC,
        "host_private_key": HOST_PRIVATE,
        "host_public_key": HOST_PUBLIC,
    }
    return WrapperConfig(**(values | overrides))


def incompressible(chars: int, seed: int = 0) -> str:
    return base64.b64encode(random.Random(seed).randbytes(chars))[:chars].decode()


def bash_syntax_ok(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, "-n"], input=script, capture_output=True, text=True, timeout=10, check=False)


# -- size and encoding -------------------------------------------------------------------------------------------


def test_small_job_is_a_plain_bash_script() -> None:
    """Given a typical job, the user data is the script itself (readable in the console), not gzip."""
    data = render(make_config())
    assert data.startswith(b"#!/bin/bash\n")
    assert len(data) <= USER_DATA_LIMIT
    assert decode(data) == render_script(make_config())


def test_render_is_deterministic_whatever_the_env_order() -> None:
    """Given the same config twice (envs in another order, as a database may return them), the bytes are equal:
    EC2's ClientToken idempotency needs identical user data on a retried launch."""
    first = render(make_config(envs={"A": "1", "B": "2"}))
    again = render(make_config(envs={"B": "2", "A": "1"}))
    assert first == again


def test_large_compressible_job_is_gzipped_under_the_limit() -> None:
    """Given a run of 60 KB that compresses well, the user data is gzip (cloud-init unpacks it) within 16 KB,
    byte-identical on every render (mtime 0), and decode() gives back the script."""
    run = "\n".join(f"echo step {i}: training the model on shard {i % 7}" for i in range(1500))
    config = make_config(run=run)
    assert len(render_script(config).encode()) > USER_DATA_LIMIT
    data = render(config)
    assert data[:2] == b"\x1f\x8b"
    assert len(data) <= USER_DATA_LIMIT
    assert data == render(config)
    assert decode(data) == render_script(config)
    assert gzip.decompress(data).decode().startswith("#!/bin/bash\n")
    check_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, config.envs, config.setup, config.run, 3600)


def test_incompressible_huge_env_value_is_refused_with_advice() -> None:
    """Given a 40 KB random env value, both check_fits (at submission) and render (at launch) refuse it, saying
    how big it is, what the limit is, which part is largest and what to do instead."""
    envs = {"BLOB": incompressible(40_000)}
    with pytest.raises(UserDataTooLarge) as raised:
        render(make_config(envs=envs))
    message = raised.value.message
    assert isinstance(raised.value, InvalidSpec)
    assert "KB even gzipped" in message
    assert "16 KB EC2 limit" in message
    assert "env BLOB" in message
    assert "into a script in your repository or image and call it" in message
    with pytest.raises(UserDataTooLarge, match="16 KB EC2 limit"):
        check_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, envs, None, "python train.py", 3600)


def test_check_fits_accepts_ordinary_jobs() -> None:
    check_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, {"A": "1"}, None, "python train.py", 60)
    check_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, {}, "x" * 30_000, "y" * 30_000, 60)  # big but compressible


FIT_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FIT_SETTINGS
@given(
    random_chars=st.integers(min_value=12_000, max_value=22_000),
    repetitive_chars=st.integers(min_value=0, max_value=40_000),
    in_env=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_check_fits_passing_means_render_fits(
    random_chars: int, repetitive_chars: int, in_env: bool, seed: int
) -> None:
    """For sizes around the limit (random text compresses ~25%, repetitive text ~100%): whenever check_fits
    passes at submission, the real render with real-length keys fits; and check_fits refuses only jobs that
    really are close to (or over) the limit."""
    blob = incompressible(random_chars, seed)
    run = "python train.py\n" + "echo all work and no play\n" * (repetitive_chars // 26)
    envs = {"BLOB": blob} if in_env else {}
    if not in_env:
        run += "\n# " + blob
    try:
        check_fits(JOB_ID, TEAM_ID, INSTANCE_TYPE, envs, "pip install .", run, 7200)
    except UserDataTooLarge:
        script = render_script(make_config(envs=envs, setup="pip install .", run=run, max_runtime_seconds=7200))
        assert len(gzip.compress(script.encode(), mtime=0)) > USER_DATA_LIMIT - 2048  # refused only near the limit
    else:
        data = render(make_config(envs=envs, setup="pip install .", run=run, max_runtime_seconds=7200))
        assert len(data) <= USER_DATA_LIMIT


# -- shell safety ------------------------------------------------------------------------------------------------

NASTY = [
    "EOF",
    "echo 'single' \"double\" `backtick` $(subshell) ${brace} $HOME \\ trailing backslash \\",
    "cat <<EOF\nEOF\n'EOF'\nEC2JOBS_EOF_\n",
    "@@RUN_BODY@@ @@JOB_ID@@ @@HOST_PRIVATE_KEY@@",
    "no trailing newline",
    "trailing newlines\n\n\n",
    "",
    "ünïcødé ✓ 日本語 \t tab \r carriage return",
    "}\n'\n\"\nfi\ndone\nesac\n)",
]


@pytest.mark.parametrize("text", NASTY)
def test_rendered_script_is_valid_bash_whatever_the_user_text(text: str) -> None:
    """Given user text full of quotes, heredoc-looking lines and placeholder-looking words (in setup, run and an
    env value), the rendered script passes `bash -n` and carries the text untouched."""
    config = make_config(setup=text, run=text or "true", envs={"V": text})
    script = render_script(config)
    result = bash_syntax_ok(script)
    assert result.returncode == 0, result.stderr
    if text.rstrip("\n"):
        assert text.rstrip("\n") in script


def test_gzipped_script_is_valid_bash() -> None:
    config = make_config(run="\n".join(f"echo 'line {i}' \"$HOME\"" for i in range(3000)))
    data = render(config)
    assert data[:2] == b"\x1f\x8b"
    result = bash_syntax_ok(decode(data))
    assert result.returncode == 0, result.stderr


def test_placeholders_in_user_text_are_not_substituted() -> None:
    """Substitution is one pass: a user who writes @@JOB_ID@@ gets those characters, not the job id."""
    script = render_script(make_config(run="echo @@JOB_ID@@ @@NOT_A_PLACEHOLDER@@"))
    assert "echo @@JOB_ID@@ @@NOT_A_PLACEHOLDER@@" in script


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


# -- secrets and validation -------------------------------------------------------------------------------------


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
        ("run", "echo a\0b"),
        ("setup", "\0"),
        ("envs", {"A": "x\0y"}),
        ("envs", {"BAD-NAME": "x"}),
        ("envs", {"A;rm -rf /": "x"}),
        ("run", "lone surrogate \ud800"),
    ],
)
def test_text_a_shell_cannot_carry_is_an_invalid_spec(field: str, value: Any) -> None:
    with pytest.raises(InvalidSpec):
        render(make_config(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_runtime_seconds", 0),
        ("drain_timeout_seconds", -1),
        ("shutdown_grace_seconds", True),
        ("ssh_user", "ubuntu; rm -rf /"),
        ("ssh_user", "../root"),
        ("ssh_authorized_key", "ssh-ed25519 AAAA\nssh-rsa BBBB"),
        ("host_public_key", ""),
        ("host_private_key", "not a key"),
    ],
)
def test_malformed_launch_configuration_is_a_programming_error(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        make_config(**{field: value})
