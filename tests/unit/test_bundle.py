"""The start bundle: the job's envs, setup and run, byte for byte, as the relay hands them to the instance."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane.core.bundle import StartBundle, pack, unpack
from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import TaskSpec

BASH = shutil.which("bash") or "/bin/bash"
TRICKY = {
    "QUOTES": "it's \"quoted\" and 'single'",
    "DOLLAR": "$HOME ${PATH} $(id) `id` \\n",
    "MULTILINE": "first line\nEOF\n  indented\n",
    "UNICODE": "ünïcødé ✓ 日本語",
    "EMPTY": "",
}


def make(**overrides: object) -> StartBundle:
    values: dict[str, object] = {"job_id": "job-1", "team_id": "team-1", "instance_type": "g5.xlarge",
                                 "envs": TRICKY, "setup": "pip install x\n", "run": "python train.py"}  # fmt: skip
    return StartBundle(**(values | overrides))  # type: ignore[arg-type]


def test_files_carry_the_text_verbatim_and_the_env_file_round_trips_through_bash(tmp_path: Path) -> None:
    files = make().files()
    assert files["setup.sh"] == b"pip install x\n"
    assert files["run.sh"] == b"python train.py"
    assert files["meta"] == b"version=1\njob_id=job-1\n"
    env = tmp_path / "env.sh"
    env.write_bytes(files["env.sh"])
    names = "QUOTES DOLLAR MULTILINE UNICODE EMPTY EC2JOBS_JOB_ID"
    script = f'. "$1"; for n in {names}; do printf "%s\\0" "${{!n}}"; done'
    shown = (
        subprocess.run(
            [BASH, "-c", script, "x", str(env)], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
        )
        .stdout.decode()
        .split("\0")[:-1]
    )
    assert shown == [*TRICKY.values(), "job-1"]


def test_ours_win_over_the_users_and_pythonunbuffered_is_the_users() -> None:
    text = make(envs={"EC2JOBS_JOB_ID": "spoof", "PYTHONUNBUFFERED": ""}).files()["env.sh"].decode()
    assert text.index("export EC2JOBS_JOB_ID=spoof") < text.index("export EC2JOBS_JOB_ID=job-1")
    assert text.index("export PYTHONUNBUFFERED=1") < text.index("export PYTHONUNBUFFERED=''")


def test_tar_round_trips_and_is_deterministic_whatever_the_env_order() -> None:
    first = make(envs={"A": "1", "B": "2"}).tar()
    assert first == make(envs={"B": "2", "A": "1"}).tar()
    assert unpack(first) == make(envs={"A": "1", "B": "2"}).files()


@pytest.mark.parametrize(
    "overrides", [{"run": "a\0b"}, {"setup": "\ud800"}, {"envs": {"BAD-NAME": "x"}}, {"envs": {"A": "\0"}}]
)
def test_text_a_shell_cannot_carry_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec):
        make(**overrides).files()


def test_pack_refuses_paths() -> None:
    with pytest.raises(ValueError, match="plain name"):
        pack({"../x": b""})


def test_repr_shows_no_text() -> None:
    text = repr(make(envs={"SECRETISH": "value-123"}, run="echo hidden"))
    assert "value-123" not in text
    assert "hidden" not in text


def test_secrets_are_exported_like_envs_and_ours_still_win(tmp_path: Path) -> None:
    files = make(envs={"A": "1"}, secrets={"HF_TOKEN": "hf_abc 'quoted'", "EC2JOBS_JOB_ID": "spoof"}).files()
    env = tmp_path / "env.sh"
    env.write_bytes(files["env.sh"])
    shown = subprocess.run(
        [BASH, "-c", '. "$1"; printf "%s|%s|%s" "$HF_TOKEN" "$A" "$EC2JOBS_JOB_ID"', "x", str(env)],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    assert shown == "hf_abc 'quoted'|1|job-1"


def test_our_directories_follow_the_sandbox_root(tmp_path: Path) -> None:
    env = tmp_path / "env.sh"
    env.write_bytes(make().files()["env.sh"])
    script = '. "$1"; printf "%s %s" "$EC2JOBS_OUTPUT_DIR" "$EC2JOBS_CHECKPOINT_DIR"'
    on_ec2 = subprocess.run(
        [BASH, "-c", script, "x", str(env)], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    ).stdout.decode()
    assert on_ec2 == "/workspace/outputs /workspace/checkpoints"
    local = subprocess.run(
        [BASH, "-c", script, "x", str(env)],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "EC2JOBS_ROOT": "/sandbox"},
    ).stdout.decode()
    assert local == "/sandbox/workspace/outputs /sandbox/workspace/checkpoints"


def test_inputs_are_name_value_lines_and_the_transfer_tool_travels_along() -> None:
    files = make(inputs={"workdir_key": "teams/t/uploads/up-1/archive.tar.gz", "sync_seconds": "120"}).files()
    assert files["inputs"] == b"sync_seconds=120\nworkdir_key=teams/t/uploads/up-1/archive.tar.gz\n"
    assert files["ec2jobs_transfer.py"].startswith(b"#!") or b"import" in files["ec2jobs_transfer.py"]
    with pytest.raises(ValueError, match="cannot be carried"):
        make(inputs={"workdir_url": "https://x\nsync_seconds=1"}).files()


def test_env_sh_exports_the_attempt_and_the_restarts(tmp_path: Path) -> None:
    """Given a bundle for attempt 3 after 2 restarts, Then env.sh exports EC2JOBS_ATTEMPT=3 and EC2JOBS_RESTARTS=2
    (after anything else of that name: ours win); a first attempt shows 1 and 0."""
    spec = TaskSpec(run="python train.py", envs={"A": "1"})
    third = StartBundle.for_spec("job-1", "team-1", "g5.xlarge", spec, attempt=3, restarts=2)
    env = tmp_path / "env.sh"
    script = '. "$1"; printf "%s|%s|%s" "$EC2JOBS_ATTEMPT" "$EC2JOBS_RESTARTS" "$A"'
    shown = []
    for bundle in (third, StartBundle.for_spec("job-1", "team-1", "g5.xlarge", spec), make(envs={}, attempt=2)):
        env.write_bytes(bundle.files()["env.sh"])
        shown.append(
            subprocess.run(
                [BASH, "-c", script, "x", str(env)], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
            ).stdout.decode()
        )
    assert shown == ["3|2|1", "1|0|1", "2|0|"]
    text = make(envs={}, secrets={"EC2JOBS_ATTEMPT": "spoof"}, attempt=3, restarts=2).files()["env.sh"].decode()
    assert text.index("export EC2JOBS_ATTEMPT=spoof") < text.index(
        "export EC2JOBS_ATTEMPT=3\nexport EC2JOBS_RESTARTS=2\n"
    )
    with pytest.raises(ValueError, match="count from 1"):
        StartBundle.for_spec("job-1", "team-1", "g5.xlarge", spec, attempt=0).files()
