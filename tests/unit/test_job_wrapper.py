"""The job wrapper script, run for real by bash in a sandbox: EC2JOBS_ROOT points every path into tmp_path and
shim executables stand in for shutdown, aws, systemctl and curl (IMDS).

PATH holds only the shims and a directory of links to the ordinary tools the script and the test jobs use, so the
real aws CLI, curl and shutdown can never be reached, whatever is installed on the machine running the tests.
"""

from __future__ import annotations

import base64
import getpass
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from controlplane.core.bundle import StartBundle
from controlplane.core.userdata import WrapperConfig, decode, render

BASH = shutil.which("bash") or "/bin/bash"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
TOOLS = (
    "bash",
    "cat",
    "chmod",
    "chown",
    "cut",
    "date",
    "env",
    "find",
    "getent",
    "grep",
    "head",
    "id",
    "kill",
    "ls",
    "mkdir",
    "mkfifo",
    "mktemp",
    "mv",
    "ps",
    "readlink",
    "rm",
    "runuser",
    "sed",
    "sleep",
    "stdbuf",
    "tail",
    "timeout",
    "touch",
)
INSTANCE_ID = "i-0123456789abcdef0"
TOKEN = "imds-token-abc123"  # a fake IMDS session token
IMDS = "http://127.0.0.1:9"
TERMINATE = f"ec2 terminate-instances --region us-east-1 --instance-ids {INSTANCE_ID}"

_KEY = Ed25519PrivateKey.generate()
HOST_PRIVATE = _KEY.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
HOST_PUBLIC = _KEY.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " ec2jobs-host"
RELAY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ec2jobs-relay"

CURL_SHIM = r"""
method=GET url= headers=()
while [ $# -gt 0 ]; do
  case $1 in
    -X) method=$2; shift 2 ;;
    -H) headers+=("$2"); shift 2 ;;
    --max-time) shift 2 ;;
    -*) shift ;;
    *) url=$1; shift ;;
  esac
done
printf '%s %s\n' "$method" "$url" >>"$LOGS/imds.log"
has() { local h; for h in "${headers[@]}"; do [ "$h" = "$1" ] && return 0; done; return 1; }
case "$method $url" in
  "PUT $IMDS/latest/api/token")
    has "X-aws-ec2-metadata-token-ttl-seconds: 300" || { echo NO_TTL_HEADER >>"$LOGS/imds.log"; exit 22; }
    printf '%s' "$TOKEN" ;;
  "GET $IMDS/latest/meta-data/instance-id")
    has "X-aws-ec2-metadata-token: $TOKEN" || { echo NO_TOKEN >>"$LOGS/imds.log"; exit 22; }
    printf '%s' "$INSTANCE_ID" ;;
  "GET $IMDS/latest/meta-data/placement/region")
    has "X-aws-ec2-metadata-token: $TOKEN" || { echo NO_TOKEN >>"$LOGS/imds.log"; exit 22; }
    printf 'us-east-1' ;;
  *) exit 22 ;;
esac
"""


@dataclass
class Outcome:
    process: subprocess.CompletedProcess[str]
    elapsed: float
    sandbox: Sandbox

    def result(self) -> dict[str, str]:
        text = (self.sandbox.state / "result").read_text()
        return dict(line.split("=", 1) for line in text.splitlines())

    def output(self) -> str:
        return (self.sandbox.state / "output.log").read_text(encoding="utf-8")


class Sandbox:
    """An instance in a directory: EC2JOBS_ROOT, shims on PATH, and a log of every shim call in order."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.state = self.root / "var/lib/ec2jobs"
        self.workspace = self.root / "workspace"
        self.logs = base / "logs"
        self.shims = base / "shims"
        self.tools = base / "tools"
        for directory in (self.root, self.logs, self.shims, self.tools):
            directory.mkdir(parents=True)
        for tool in TOOLS:
            found = shutil.which(tool, path=SYSTEM_PATH)
            if found:
                (self.tools / tool).symlink_to(found)
        self.write_shim("shutdown", "")
        self.write_shim("systemctl", "")
        self.write_shim("curl", CURL_SHIM)
        self.aws("succeeds")

    def write_shim(self, name: str, body: str) -> None:
        shim = self.shims / name
        shim.write_text(
            f"#!{BASH}\n"
            f"LOGS={self.logs}\nIMDS={IMDS}\nTOKEN={TOKEN}\nINSTANCE_ID={INSTANCE_ID}\n"
            f'printf "%s\\n" "{name} $*" >>"$LOGS/calls.log"\n'
            f'printf "%s\\n" "$*" >>"$LOGS/{name}.log"\n' + body
        )
        shim.chmod(0o755)

    def aws(self, behaviour: str) -> None:
        """`succeeds`, `fails` or `missing` (no aws anywhere on PATH)."""
        (self.shims / "aws").unlink(missing_ok=True)
        if behaviour != "missing":
            self.write_shim(
                "aws", "exit 0\n" if behaviour == "succeeds" else "echo 'UnauthorizedOperation' >&2\nexit 1\n"
            )

    def calls(self, name: str = "calls") -> list[str]:
        log = self.logs / f"{name}.log"
        return log.read_text().splitlines() if log.exists() else []

    def environment(self) -> dict[str, str]:
        return {"PATH": f"{self.shims}:{self.tools}", "EC2JOBS_ROOT": str(self.root), "EC2JOBS_IMDS_ENDPOINT": IMDS}

    def script(self, job: Job) -> Path:
        path = self.base / "user-data.sh"
        path.write_text(decode(render(job.config)), encoding="utf-8")
        return path

    def deliver(self, job: Job, tool: str | None = None) -> None:
        """What the relay does over SSH: the start bundle, unpacked, renamed into place (and, with `tool`, a stand-in
        for the instance's S3 client plus a grants file)."""
        staging = self.state / "relay" / "bundle.new"
        staging.mkdir(parents=True)
        for name, data in job.bundle.files().items():
            (staging / name).write_bytes(data)
        if tool is not None:
            (staging / "ec2jobs_transfer.py").write_text(tool)
            (self.state / "relay" / "grants.json").write_text("{}")
        staging.rename(self.state / "relay" / "bundle")

    def run(self, job: Job, timeout: float = 30, *, deliver: bool = True) -> Outcome:
        script = self.script(job)
        if deliver:
            self.deliver(job)
        started = time.monotonic()
        process = subprocess.run(
            [BASH, str(script)], env=self.environment(), capture_output=True, text=True, timeout=timeout, check=False
        )
        return Outcome(process, time.monotonic() - started, self)


@dataclass(frozen=True)
class Job:
    config: WrapperConfig  # what user data carries
    bundle: StartBundle  # what the relay delivers over SSH


def make_config(**overrides: Any) -> Job:
    values: dict[str, Any] = {
        "job_id": "job-0123456789abcdef0123",
        "team_id": "team-42",
        "instance_type": "g5.xlarge",
        "max_runtime_seconds": 60,
        "drain_timeout_seconds": 0,
        "bundle_timeout_seconds": 5,
        "ssh_user": getpass.getuser(),
        "relay_user": getpass.getuser(),
        "ssh_authorized_key": RELAY_KEY,
        "host_private_key": HOST_PRIVATE,
        "host_public_key": HOST_PUBLIC,
    } | overrides
    spec = {name: values.pop(name) for name in ("envs", "setup", "run", "inputs") if name in values}
    config = WrapperConfig(**values)
    bundle = StartBundle(
        job_id=config.job_id, team_id=config.team_id, instance_type=config.instance_type,
        envs=spec.get("envs", {}), setup=spec.get("setup"), run=spec.get("run", "echo hello"),
        inputs=spec.get("inputs", {}),
    )  # fmt: skip
    return Job(config, bundle)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


TRICKY = {
    "QUOTES": "it's \"quoted\" and 'single'",
    "DOLLAR": "$HOME ${PATH} $(id) `id` \\n",
    "MULTILINE": "first line\nEOF\n  indented\n",
    "UNICODE": "ünïcødé ✓ 日本語",
    "EMPTY": "",
}


# -- outcomes ----------------------------------------------------------------------------------------------------


def test_success_runs_setup_then_run_in_the_workspace_with_the_envs(sandbox: Sandbox) -> None:
    """Given a job whose setup and run both print to stdout and stderr and dump their envs,
    When the wrapper runs it,
    Then output.log holds both phases' output in order, the result is SUCCEEDED, and both phases saw the exact
    env values, the EC2JOBS_ variables and PYTHONUNBUFFERED=1, with the workspace as cwd."""
    dump = "".join(f'printf %s "${name}" >"$1.{name}"\n' for name in TRICKY)
    setup = f"echo setup-out; echo setup-err >&2\nset -- setup\n{dump}pwd >setup.cwd\n"
    run = (
        f"echo run-out; echo run-err >&2\nset -- run\n{dump}pwd >run.cwd\n"
        'printf "%s|%s|%s|%s" "$EC2JOBS_JOB_ID" "$EC2JOBS_TEAM_ID" "$EC2JOBS_INSTANCE_TYPE" "$PYTHONUNBUFFERED" >ids\n'
    )
    outcome = sandbox.run(make_config(envs=TRICKY, setup=setup, run=run))

    assert outcome.process.returncode == 0, outcome.process.stderr
    assert outcome.output() == "setup-out\nsetup-err\nrun-out\nrun-err\n"
    assert outcome.result() == {
        "phase": "run",
        "exit_code": "0",
        "reason": "SUCCEEDED",
        "finished_at": outcome.result()["finished_at"],
    }
    assert abs(int(outcome.result()["finished_at"]) - time.time()) < 60
    assert (sandbox.state / "phase").read_text() == "run\n"
    for phase in ("setup", "run"):
        for name, value in TRICKY.items():
            assert (sandbox.workspace / f"{phase}.{name}").read_text(encoding="utf-8") == value, (phase, name)
        assert Path((sandbox.workspace / f"{phase}.cwd").read_text().strip()).resolve() == sandbox.workspace.resolve()
    assert (sandbox.workspace / "ids").read_text() == "job-0123456789abcdef0123|team-42|g5.xlarge|1"


def test_the_users_pythonunbuffered_wins(sandbox: Sandbox) -> None:
    outcome = sandbox.run(make_config(envs={"PYTHONUNBUFFERED": ""}, run='echo "[$PYTHONUNBUFFERED]"'))
    assert outcome.output() == "[]\n"


def test_the_jobs_envs_win_over_the_login_profile(sandbox: Sandbox) -> None:
    """Given a job that sets PATH (which Debian's /etc/profile resets in the login shell the wrapper starts first,
    so the AMI's /etc/profile.d applies), Then the job still sees its own PATH: the env file is read after."""
    path = "/opt/custom/bin:" + os.environ.get("PATH", "/usr/bin:/bin")
    sandbox.run(make_config(envs={"PATH": path}, run='printf "%s" "$PATH" >path.seen'))
    assert (sandbox.workspace / "path.seen").read_text() == path


def test_setup_failure_is_recorded_and_run_never_starts(sandbox: Sandbox) -> None:
    """Given a setup that exits 3, Then the result names setup and its code, and run never started."""
    outcome = sandbox.run(make_config(setup="echo preparing\nexit 3", run="touch run-started"))
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "setup",
        "exit_code": "3",
        "reason": "SETUP_FAILED",
        "finished_at": "",
    }
    assert not (sandbox.workspace / "run-started").exists()
    assert (sandbox.state / "phase").read_text() == "setup\n"
    assert outcome.output() == "preparing\n"
    assert sandbox.calls("aws") == [TERMINATE]


def test_run_failure_is_recorded(sandbox: Sandbox) -> None:
    outcome = sandbox.run(make_config(setup="true", run="echo failing >&2; exit 7"))
    assert (outcome.result()["phase"], outcome.result()["exit_code"], outcome.result()["reason"]) == (
        "run",
        "7",
        "EXIT_NONZERO",
    )
    assert outcome.output() == "failing\n"


def test_user_exit_124_before_the_deadline_is_an_ordinary_failure(sandbox: Sandbox) -> None:
    outcome = sandbox.run(make_config(run="exit 124"))
    assert outcome.result()["reason"] == "EXIT_NONZERO"


def test_max_runtime_kills_run(sandbox: Sandbox) -> None:
    """Given max_runtime_seconds=2 and a run that sleeps 30 s, Then the run is killed at the deadline
    (MAX_RUNTIME, timeout's 124) and the wrapper finishes long before 30 s."""
    outcome = sandbox.run(make_config(max_runtime_seconds=2, setup="echo ready", run="echo start; sleep 30"))
    assert outcome.elapsed < 10
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "run",
        "exit_code": "124",
        "reason": "MAX_RUNTIME",
        "finished_at": "",
    }
    assert outcome.output() == "ready\nstart\n"
    assert sandbox.calls("aws") == [TERMINATE]


def test_max_runtime_covers_setup_too(sandbox: Sandbox) -> None:
    """Given a setup that outlives the shared deadline, Then the result names setup and run never starts."""
    outcome = sandbox.run(make_config(max_runtime_seconds=2, setup="sleep 30", run="touch run-started"))
    assert outcome.elapsed < 10
    assert (outcome.result()["phase"], outcome.result()["reason"]) == ("setup", "MAX_RUNTIME")
    assert not (sandbox.workspace / "run-started").exists()


def test_background_processes_are_stopped_before_the_result(sandbox: Sandbox) -> None:
    """Given a run that leaves a process behind holding output.log, Then that process is gone once the result
    exists (the relay's output is final), and the wrapper does not wait for it."""
    outcome = sandbox.run(make_config(run="sleep 300 &\necho $! >bg.pid\necho started"))
    assert outcome.elapsed < 10
    assert outcome.result()["reason"] == "SUCCEEDED"
    pid = int((sandbox.workspace / "bg.pid").read_text())
    status = Path(f"/proc/{pid}/status")
    for _ in range(50):  # an orphan is reaped by init asynchronously
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.02)
    assert not status.exists() or "State:\tZ" in status.read_text()
    assert "stopping job processes that still write output" in (sandbox.state / "wrapper.log").read_text()


def test_readers_of_the_output_such_as_the_relay_are_left_alone(sandbox: Sandbox) -> None:
    """Given a reader of output.log outside the job (the relay's SSH read) and a leftover writer inside it,
    Then only the writer is stopped before the result is written."""
    sandbox.state.mkdir(parents=True)
    (sandbox.state / "output.log").touch()
    reader = subprocess.Popen(["tail", "-f", str(sandbox.state / "output.log")], stdout=subprocess.DEVNULL)
    try:
        outcome = sandbox.run(make_config(run="sleep 300 &\necho $! >bg.pid"))
        assert outcome.result()["reason"] == "SUCCEEDED"
        assert reader.poll() is None, "the reader was killed"
        writer = Path(f"/proc/{int((sandbox.workspace / 'bg.pid').read_text())}/status")
        for _ in range(50):
            if not writer.exists() or "State:\tZ" in writer.read_text():
                break
            time.sleep(0.02)
        assert not writer.exists() or "State:\tZ" in writer.read_text()
    finally:
        reader.kill()
        reader.wait()


def test_a_reboot_guard_terminates_the_instance_on_any_later_boot(sandbox: Sandbox) -> None:
    """Given the wrapper ran, Then cloud-init's per-boot directory holds a guard that does nothing during this boot
    and shuts the instance down (terminates it) on any later boot: a rebooted job can never keep billing."""
    sandbox.run(make_config())
    guard = sandbox.root / "var/lib/cloud/scripts/per-boot/ec2jobs-reboot-guard.sh"
    assert guard.read_text().startswith("#!/bin/bash\n")
    assert os.access(guard, os.X_OK)
    shutdowns = len(sandbox.calls("shutdown"))

    subprocess.run([BASH, str(guard)], env=sandbox.environment(), check=True, timeout=10)
    assert len(sandbox.calls("shutdown")) == shutdowns  # same boot: nothing

    (sandbox.state / "boot_id").write_text("an-earlier-boot\n")
    subprocess.run([BASH, str(guard)], env=sandbox.environment(), check=True, timeout=10)
    assert sandbox.calls("shutdown")[-1] == "-h now"
    assert "rebooted" in (sandbox.state / "wrapper.log").read_text()


# -- deadline and termination ------------------------------------------------------------------------------------


def test_deadline_shutdown_is_scheduled_first(sandbox: Sandbox) -> None:
    """Given max_runtime 125 s and grace 600 s, Then before anything else the wrapper ran `shutdown -h +13`
    (ceil(725 / 60)), the last-resort kill switch."""
    sandbox.run(make_config(max_runtime_seconds=125, shutdown_grace_seconds=600))
    assert sandbox.calls()[0] == "shutdown -h +13"
    assert sandbox.calls("shutdown") == ["-h +13"]
    assert "deadline scheduled: shutdown -h +13" in (sandbox.state / "wrapper.log").read_text()


def test_drained_marker_ends_the_wait_and_the_instance_terminates_itself(sandbox: Sandbox) -> None:
    """Given a relay that creates `drained` as soon as `result` appears (checking the output is complete then),
    When the drain timeout is long (60 s),
    Then the wrapper terminates through the EC2 API within a few seconds (IMDSv2 for id and region) and does
    not shut down."""
    seen: dict[str, str] = {}

    def relay() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (sandbox.state / "result").exists():
                seen["output"] = (sandbox.state / "output.log").read_text()
                (sandbox.state / "relay" / "drained").touch()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    outcome = sandbox.run(make_config(drain_timeout_seconds=60, run="echo one; sleep 0.3; echo two"))
    thread.join(timeout=5)

    assert outcome.elapsed < 8
    assert seen["output"] == "one\ntwo\n"
    assert sandbox.calls("aws") == [TERMINATE]
    assert sandbox.calls("shutdown") == ["-h +11"]  # only the deadline: no `shutdown -h now`
    assert "NO_TOKEN" not in sandbox.calls("imds")
    assert sandbox.calls("imds")[0] == f"PUT {IMDS}/latest/api/token"
    wrapper_log = (sandbox.state / "wrapper.log").read_text()
    assert "drained marker found" in wrapper_log
    assert "terminate-instances" in wrapper_log


def test_without_the_marker_the_wrapper_waits_the_drain_timeout_then_terminates(sandbox: Sandbox) -> None:
    outcome = sandbox.run(make_config(drain_timeout_seconds=2))
    assert 1.5 < outcome.elapsed < 8
    assert sandbox.calls("aws") == [TERMINATE]
    assert "no drained marker after 2s" in (sandbox.state / "wrapper.log").read_text()


@pytest.mark.parametrize("failure", ["aws missing", "aws fails", "imds down"])
def test_falls_back_to_shutdown_when_the_api_path_fails(sandbox: Sandbox, failure: str) -> None:
    """Given no aws CLI, a failing terminate-instances call, or no IMDS, Then the wrapper shuts the instance down
    (the instance's shutdown behaviour is terminate)."""
    if failure == "aws missing":
        sandbox.aws("missing")
    elif failure == "aws fails":
        sandbox.aws("fails")
    else:
        sandbox.write_shim("curl", "exit 7\n")
    outcome = sandbox.run(make_config())
    assert outcome.result()["reason"] == "SUCCEEDED"
    assert sandbox.calls("shutdown") == ["-h +11", "-h now"]
    assert sandbox.calls("aws") == ([TERMINATE] if failure == "aws fails" else [])
    assert "terminating: shutdown -h now" in (sandbox.state / "wrapper.log").read_text()


def test_a_wrapper_killed_midway_still_terminates_once(sandbox: Sandbox) -> None:
    """Given the wrapper receives SIGTERM while the job runs, Then the EXIT trap terminates the instance
    (exactly once) even though no result was written."""
    script = sandbox.script(make_config(run="touch started; sleep 1"))
    process = subprocess.Popen(
        [BASH, str(script)], env=sandbox.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            if (sandbox.workspace / "started").exists():
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 143
    finally:
        if process.poll() is None:
            process.kill()
    assert sandbox.calls("aws") == [TERMINATE]
    assert sandbox.calls("shutdown") == ["-h +11"]
    assert not (sandbox.state / "result").exists()
    assert "stopped unexpectedly" in (sandbox.state / "wrapper.log").read_text()


# -- SSH keys and verbatim commands ------------------------------------------------------------------------------


def test_ssh_host_key_and_relay_key_are_installed(sandbox: Sandbox) -> None:
    """Given a fresh instance, Then the pinned host key pair is installed (600/644), sshd reload is attempted, the
    relay key is the only line of the relay user's authorized_keys (root's, 644, in a root-owned home), a rerun
    does not duplicate it, and the private key appears in no log."""
    outcome = sandbox.run(make_config())

    key = sandbox.root / "etc/ssh/ssh_host_ed25519_key"
    assert key.read_text() == HOST_PRIVATE
    assert (key.stat().st_mode & 0o777) == 0o600
    public = sandbox.root / "etc/ssh/ssh_host_ed25519_key.pub"
    assert public.read_text() == HOST_PUBLIC + "\n"
    assert (public.stat().st_mode & 0o777) == 0o644
    assert any("ssh" in call for call in sandbox.calls("systemctl"))
    home = sandbox.root / "var/lib" / getpass.getuser()
    authorized = home / ".ssh/authorized_keys"
    assert authorized.read_text() == f"{RELAY_KEY}\n"
    assert (authorized.stat().st_mode & 0o777) == 0o644
    for path in (home, home / ".ssh"):
        assert (path.stat().st_mode & 0o777) == 0o755

    secret_line = HOST_PRIVATE.splitlines()[2]
    logs = [outcome.process.stdout, outcome.process.stderr, (sandbox.state / "wrapper.log").read_text()]
    assert not any(secret_line in text for text in logs)

    (sandbox.state / "relay" / "bundle").rename(sandbox.base / "first-bundle")
    sandbox.run(make_config())  # idempotent
    assert authorized.read_text() == f"{RELAY_KEY}\n"


def test_state_files_are_readable_and_only_the_relay_dir_is_private_to_the_relay(sandbox: Sandbox) -> None:
    sandbox.run(make_config())
    for name in ("output.log", "result", "phase", "wrapper.log"):
        assert (sandbox.state / name).stat().st_mode & 0o444 == 0o444, name
    for name in ("env.sh", "setup.sh", "run.sh"):
        assert ((sandbox.state / name).stat().st_mode & 0o777) == 0o600, name
    assert (sandbox.state.stat().st_mode & 0o777) == 0o755
    assert ((sandbox.state / "relay").stat().st_mode & 0o777) == 0o700


# -- inputs and outputs (a stand-in S3 client that records its calls) ---------------------------------------------


TOOL = """
import os, sys
args = sys.argv[3:]
with open(os.environ["EC2JOBS_ROOT"] + "/../logs/transfer.log", "a") as log:
    log.write(" ".join(a.replace(os.environ["EC2JOBS_ROOT"], "$ROOT") for a in args) + "\\n")
if os.environ.get("FAIL_" + args[0].replace("-", "_").upper()):
    sys.stderr.write("ec2jobs_transfer: " + args[0] + " failed: HTTP 503 SlowDown\\n")
    sys.exit(1)
if args[0] == "extract":
    with open(args[2] + "/from-the-archive.txt", "w") as out:
        out.write("unpacked")
if args[0] == "sync-up":
    with open(args[args.index("--state") + 1], "w") as state:
        state.write("{}")
if args[0] == "sync-down":
    with open(args[2] + "/restored.pt", "w") as out:
        out.write("from an earlier sync")
    if os.environ.get("INTERRUPT_DURING_INPUTS"):  # the relay's interrupt marker, while the inputs are fetched
        open(os.environ["EC2JOBS_ROOT"] + "/var/lib/ec2jobs/relay/interrupt", "w").close()
"""


@pytest.fixture
def with_python(sandbox: Sandbox) -> Sandbox:
    python = shutil.which("python3", path=SYSTEM_PATH)
    if python is None:
        pytest.skip("no python3")
    (sandbox.tools / "python3").symlink_to(python)
    return sandbox


def test_outputs_and_checkpoints_are_uploaded_after_the_job_and_the_workdir_fetched_before(
    with_python: Sandbox,
) -> None:
    sandbox = with_python
    job = make_config(
        run="cat from-the-archive.txt\n"
        'echo model >"$EC2JOBS_OUTPUT_DIR/model.bin"; echo c >"$EC2JOBS_CHECKPOINT_DIR/c"',
        inputs={"workdir_key": "teams/t/uploads/up-1/archive.tar.gz", "sync_seconds": "120"},
    )
    sandbox.deliver(job, tool=TOOL)
    outcome = sandbox.run(job, deliver=False)
    assert outcome.result()["reason"] == "SUCCEEDED", outcome.output()
    assert outcome.output() == "unpacked"
    assert (outcome.result()["outputs"], outcome.result()["checkpoints"]) == ("ok", "ok")
    calls = (sandbox.logs / "transfer.log").read_text().splitlines()
    assert calls[0] == "extract teams/t/uploads/up-1/archive.tar.gz $ROOT/workspace/workdir"
    assert calls[1:] == [
        "sync-up $ROOT/workspace/outputs outputs --state $ROOT/var/lib/ec2jobs/sync-outputs.json",
        "sync-up $ROOT/workspace/checkpoints checkpoints --state $ROOT/var/lib/ec2jobs/sync-checkpoints.json",
    ]


def test_a_failed_upload_is_retried_then_recorded_and_a_failed_input_stops_the_job(
    with_python: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = with_python
    job = make_config(run='echo x >"$EC2JOBS_OUTPUT_DIR/model.bin"', inputs={"sync_seconds": "120"})
    sandbox.deliver(job, tool=TOOL)
    env = sandbox.environment() | {"FAIL_SYNC_UP": "1", "EC2JOBS_UPLOAD_RETRY_SECONDS": "0"}
    monkeypatch.setattr(sandbox, "environment", lambda: env)
    outcome = sandbox.run(job, deliver=False)
    assert outcome.result()["reason"] == "SUCCEEDED"
    assert outcome.result()["outputs"] == "failed"
    assert outcome.result()["checkpoints"] == "none"  # nothing was written there
    assert (sandbox.state / "wrapper.log").read_text().count("uploading outputs failed (attempt") == 3

    fresh = Sandbox(sandbox.base / "second")
    (fresh.tools / "python3").symlink_to(shutil.which("python3", path=SYSTEM_PATH) or "python3")
    bad = make_config(run="echo never", inputs={"workdir_key": "teams/t/uploads/up-2/archive.tar.gz"})
    fresh.deliver(bad, tool=TOOL)
    monkeypatch.setattr(fresh, "environment", lambda: fresh.__class__.environment(fresh) | {"FAIL_EXTRACT": "1"})
    outcome = fresh.run(bad, deliver=False)
    assert outcome.result()["reason"] == "INPUTS_FAILED"
    assert (
        outcome.output()
        == "ec2jobs: fetching the workdir failed: ec2jobs_transfer: extract failed: HTTP 503 SlowDown\n"
    )


# -- the start bundle and cancel ---------------------------------------------------------------------------------


def test_the_job_waits_for_its_start_bundle(sandbox: Sandbox) -> None:
    """Given no bundle at boot, When the relay delivers it 1 s later, Then the job runs from it (user data holds
    none of the job's text)."""
    job = make_config(envs={"GREETING": "hi there"}, run='echo "$GREETING"')
    assert b"hi there" not in render(job.config)
    assert b"GREETING" not in render(job.config)
    timer = threading.Timer(1.0, sandbox.deliver, args=(job,))
    timer.start()
    try:
        outcome = sandbox.run(job, deliver=False)
    finally:
        timer.join()
    assert outcome.result()["reason"] == "SUCCEEDED"
    assert outcome.output() == "hi there\n"
    assert "start bundle received" in (sandbox.state / "wrapper.log").read_text()


def test_a_bundle_for_another_job_is_refused_and_without_a_bundle_the_instance_terminates(sandbox: Sandbox) -> None:
    """Given only a bundle made for another job, Then the wrapper ignores it, waits its bundle timeout, writes no
    result (nothing ran) and terminates the instance."""
    job = make_config(bundle_timeout_seconds=1, run="touch ran")
    other = make_config(job_id="job-ffffffffffffffffffff", run="touch ran")
    sandbox.deliver(other)
    outcome = sandbox.run(job, deliver=False)
    assert not (sandbox.state / "result").exists()
    assert not (sandbox.workspace / "ran").exists()
    assert sandbox.calls("aws") == [TERMINATE]
    log = (sandbox.state / "wrapper.log").read_text()
    assert "not for job" in log
    assert "no start bundle after 1s" in log
    assert outcome.process.returncode == 0


def test_cancel_stops_the_job_keeps_its_output_and_drains(sandbox: Sandbox) -> None:
    """Given a running job that traps SIGTERM to print a last line, When the relay writes relay/cancel, Then the job
    is stopped within the cancel grace, its last line is in output.log, the result is CANCELLED, and the wrapper
    still waits for the relay's drained marker before it terminates the instance."""
    job = make_config(
        drain_timeout_seconds=30,
        cancel_grace_seconds=5,
        run="trap 'echo got TERM; exit 143' TERM\necho working\nwhile :; do sleep 0.1; done",
    )
    relay_dir = sandbox.state / "relay"

    def relay() -> None:
        output = sandbox.state / "output.log"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"working" not in (output.read_bytes() if output.exists() else b""):
            time.sleep(0.05)
        (relay_dir / "cancel").touch()
        while time.monotonic() < deadline and not (sandbox.state / "result").exists():
            time.sleep(0.05)
        (relay_dir / "drained").touch()

    thread = threading.Thread(target=relay)
    thread.start()
    try:
        outcome = sandbox.run(job)
    finally:
        thread.join()
    assert outcome.result()["reason"] == "CANCELLED"
    assert outcome.result()["exit_code"] == "143"
    lines = outcome.output().splitlines()
    assert lines[0] == "working"
    assert lines[-1] == "got TERM"
    assert outcome.elapsed < 15
    assert "drained marker found" in (sandbox.state / "wrapper.log").read_text()
    assert sandbox.calls("aws") == [TERMINATE]


def test_cancel_kills_a_job_that_ignores_sigterm(sandbox: Sandbox) -> None:
    job = make_config(cancel_grace_seconds=1, run="trap '' TERM\necho stubborn\nwhile :; do sleep 0.1; done")

    def relay() -> None:
        output = sandbox.state / "output.log"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"stubborn" not in (output.read_bytes() if output.exists() else b""):
            time.sleep(0.05)
        (sandbox.state / "relay" / "cancel").touch()

    thread = threading.Thread(target=relay)
    thread.start()
    try:
        outcome = sandbox.run(job)
    finally:
        thread.join()
    assert outcome.result()["reason"] == "CANCELLED"
    assert outcome.result()["exit_code"] in {"137", "143"}
    assert "killing job processes" in (sandbox.state / "wrapper.log").read_text()
    assert outcome.elapsed < 12


def test_cancel_before_the_bundle_records_a_cancelled_start(sandbox: Sandbox) -> None:
    job = make_config(run="touch ran")
    (sandbox.state / "relay").mkdir(parents=True)
    (sandbox.state / "relay" / "cancel").touch()
    outcome = sandbox.run(job, deliver=False)
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "start", "exit_code": "", "reason": "CANCELLED", "finished_at": ""
    }  # fmt: skip
    assert not (sandbox.workspace / "ran").exists()


# -- interrupt (AWS takes the instance; the job runs again as its next attempt) -----------------------------------


def follow(sandbox: Sandbox, steps: list[tuple[bytes | str, str]]) -> threading.Thread:
    """A stand-in relay: for each (what to wait for, marker to write), wait until output.log holds the bytes (or, for
    "result", until the result exists), then touch relay/<marker>. Started at once; join it after the run."""

    def relay() -> None:
        output = sandbox.state / "output.log"
        deadline = time.monotonic() + 25
        for wanted, marker in steps:
            while time.monotonic() < deadline:
                if wanted == "result":
                    if (sandbox.state / "result").exists():
                        break
                elif isinstance(wanted, bytes) and wanted in (output.read_bytes() if output.exists() else b""):
                    break
                time.sleep(0.05)
            (sandbox.state / "relay" / marker).touch()

    thread = threading.Thread(target=relay)
    thread.start()
    return thread


def test_interrupt_stops_the_job_then_uploads_its_outputs_and_checkpoints(with_python: Sandbox) -> None:
    """Given a running job that saves a checkpoint when it gets SIGTERM, When the relay writes relay/interrupt,
    Then the job gets SIGTERM at once, its checkpoint is written, the last sync of outputs and checkpoints runs (unlike
    a cancel), the result is INTERRUPTED, and the wrapper drains and terminates as usual."""
    sandbox = with_python
    job = make_config(
        drain_timeout_seconds=30,
        cancel_grace_seconds=5,
        inputs={"sync_seconds": "120"},
        run="trap 'echo step-7 >\"$EC2JOBS_CHECKPOINT_DIR/last.ckpt\"; echo got TERM; exit 143' TERM\n"
        'echo partial >"$EC2JOBS_OUTPUT_DIR/metrics.json"\necho working\nwhile :; do sleep 0.1; done',
    )
    sandbox.deliver(job, tool=TOOL)
    relay = follow(sandbox, [(b"working", "interrupt"), ("result", "drained")])
    try:
        outcome = sandbox.run(job, deliver=False)
    finally:
        relay.join()
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "run", "exit_code": "143", "reason": "INTERRUPTED", "outputs": "ok", "checkpoints": "ok",
        "finished_at": "",
    }  # fmt: skip
    lines = outcome.output().splitlines()  # bash may report the killed `sleep` ("Terminated") in between
    assert (lines[0], lines[-1]) == ("working", "got TERM")
    assert (sandbox.workspace / "checkpoints" / "last.ckpt").read_text() == "step-7\n"
    assert (sandbox.logs / "transfer.log").read_text().splitlines() == [
        "sync-up $ROOT/workspace/outputs outputs --state $ROOT/var/lib/ec2jobs/sync-outputs.json",
        "sync-up $ROOT/workspace/checkpoints checkpoints --state $ROOT/var/lib/ec2jobs/sync-checkpoints.json",
    ]
    log = (sandbox.state / "wrapper.log").read_text()
    assert "interrupted: stopping the job for its next attempt (SIGTERM, SIGKILL after 5s)" in log
    assert "killing job processes" not in log  # it ended on SIGTERM, within the grace
    assert log.index("interrupted: stopping") < log.index("result: phase=run exit_code=143 reason=INTERRUPTED")
    assert "drained marker found" in log
    assert outcome.elapsed < 15
    assert sandbox.calls("aws") == [TERMINATE]


@pytest.mark.parametrize("when", ["before the bundle", "while the inputs are fetched"])
def test_an_interrupt_before_the_job_starts_records_an_interrupted_start(
    with_python: Sandbox, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Given relay/interrupt before the bundle arrives, or while the inputs are fetched (between the bundle and
    setup), Then neither setup nor run starts, nothing is uploaded, the result is phase=start reason=INTERRUPTED,
    and the instance terminates."""
    sandbox = with_python
    resume = "teams/team-42/jobs/job-0123456789abcdef0123/checkpoints/"
    job = make_config(setup="touch setup-ran", run="touch run-ran", inputs={"resume_prefix": resume, "resume_own": "1"})
    if when == "before the bundle":
        (sandbox.state / "relay").mkdir(parents=True)
        (sandbox.state / "relay" / "interrupt").touch()
    else:
        sandbox.deliver(job, tool=TOOL)
        env = sandbox.environment() | {"INTERRUPT_DURING_INPUTS": "1"}
        monkeypatch.setattr(sandbox, "environment", lambda: env)
    outcome = sandbox.run(job, deliver=False)
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "start", "exit_code": "", "reason": "INTERRUPTED", "finished_at": ""
    }  # fmt: skip
    assert not (sandbox.workspace / "setup-ran").exists()
    assert not (sandbox.workspace / "run-ran").exists()
    transfers = (sandbox.logs / "transfer.log").read_text().splitlines() if when != "before the bundle" else []
    assert [line for line in transfers if line.startswith("sync-up")] == []
    assert "interrupted before the job started" in (sandbox.state / "wrapper.log").read_text()
    assert sandbox.calls("aws") == [TERMINATE]


def test_a_cancel_wins_over_an_interrupt(with_python: Sandbox) -> None:
    """Given a job stopping for an interrupt (it traps SIGTERM and keeps going), When a cancel arrives during the
    grace, Then the result is CANCELLED and there is no last sync; and with both markers there before the bundle,
    the result is a CANCELLED start."""
    sandbox = with_python
    job = make_config(
        cancel_grace_seconds=2,
        inputs={"sync_seconds": "120"},
        run="trap 'echo got TERM' TERM\necho x >\"$EC2JOBS_OUTPUT_DIR/out\"\necho working\nwhile :; do sleep 0.1; done",
    )
    sandbox.deliver(job, tool=TOOL)
    relay = follow(sandbox, [(b"working", "interrupt"), (b"got TERM", "cancel")])
    try:
        outcome = sandbox.run(job, deliver=False)
    finally:
        relay.join()
    assert (outcome.result()["phase"], outcome.result()["reason"]) == ("run", "CANCELLED")
    assert outcome.result()["exit_code"] in {"137", "143"}  # as the cancel of a job ignoring SIGTERM
    assert "outputs" not in outcome.result()
    assert not (sandbox.logs / "transfer.log").exists()  # no upload at all: a cancelled job gets no last sync
    log = (sandbox.state / "wrapper.log").read_text()
    assert "cancelled while the job was stopping for the interrupt" in log
    assert outcome.elapsed < 15

    both = Sandbox(sandbox.base / "second")
    (both.state / "relay").mkdir(parents=True)
    (both.state / "relay" / "interrupt").touch()
    (both.state / "relay" / "cancel").touch()
    outcome = both.run(make_config(run="touch ran"), deliver=False)
    assert (outcome.result()["phase"], outcome.result()["reason"]) == ("start", "CANCELLED")
    assert not (both.workspace / "ran").exists()


def test_an_interrupt_during_or_right_after_setup_means_run_never_starts(sandbox: Sandbox) -> None:
    """Given a setup that succeeds just as relay/interrupt appears (it writes the marker as its last act), Then run
    never starts, whether the wrapper sees the marker while setup ends or between setup and run: the result names
    setup, INTERRUPTED."""
    job = make_config(
        setup='echo preparing\ntouch "$EC2JOBS_ROOT/var/lib/ec2jobs/relay/interrupt"\nexit 0', run="touch run-ran"
    )
    outcome = sandbox.run(job)
    assert (outcome.result()["phase"], outcome.result()["reason"]) == ("setup", "INTERRUPTED")
    assert not (sandbox.workspace / "run-ran").exists()
    assert outcome.output().splitlines()[0] == "preparing"
    assert "interrupted" in (sandbox.state / "wrapper.log").read_text()


def test_checkpoints_of_the_previous_attempt_are_restored_into_the_sync_state(with_python: Sandbox) -> None:
    """Given inputs resume_prefix=<the job's own checkpoints> and resume_own=1 (attempt 2 on), Then the wrapper
    restores them before setup with the periodic sync's state file (so they are not uploaded again), hands them to
    the job, and says so in its log."""
    sandbox = with_python
    own = "teams/team-42/jobs/job-0123456789abcdef0123/checkpoints/"
    job = make_config(
        setup='cat "$EC2JOBS_CHECKPOINT_DIR/restored.pt"; echo " (attempt $EC2JOBS_ATTEMPT)"',
        inputs={"resume_prefix": own, "resume_own": "1", "sync_seconds": "120"},
    )
    sandbox.deliver(job, tool=TOOL)
    outcome = sandbox.run(job, deliver=False)
    assert outcome.result()["reason"] == "SUCCEEDED", outcome.output()
    assert outcome.output() == "from an earlier sync (attempt 1)\nhello\n"
    calls = (sandbox.logs / "transfer.log").read_text().splitlines()
    assert calls[0] == (
        f"sync-down checkpoints $ROOT/workspace/checkpoints --from-prefix {own} "
        "--state $ROOT/var/lib/ec2jobs/sync-checkpoints.json"
    )
    # the periodic and the last sync use that same state file
    assert (
        "sync-up $ROOT/workspace/checkpoints checkpoints --state $ROOT/var/lib/ec2jobs/sync-checkpoints.json" in calls
    )
    assert "checkpoints restored from the previous attempt" in (sandbox.state / "wrapper.log").read_text()

    other = Sandbox(sandbox.base / "second")
    (other.tools / "python3").symlink_to(shutil.which("python3", path=SYSTEM_PATH) or "python3")
    earlier = "teams/team-42/jobs/job-earlier/checkpoints/"
    job = make_config(inputs={"resume_prefix": earlier, "sync_seconds": "120"})
    other.deliver(job, tool=TOOL)
    other.run(job, deliver=False)
    calls = (other.logs / "transfer.log").read_text().splitlines()
    # resume_from's checkpoints are another job's: not recorded as this job's uploads (no --state)
    assert calls[0] == f"sync-down checkpoints $ROOT/workspace/checkpoints --from-prefix {earlier}"
    assert f"checkpoints restored from {earlier}" in (other.state / "wrapper.log").read_text()


HEREDOC_LOOKALIKES = """echo "start $# args"
cat <<EOF
EOF
cat <<'EOF'
$HOME `id` $(id)
EOF
EC2JOBS_EOF_
echo 'single' "double" \\$ `echo back` $((1 + 2)) "@@JOB_ID@@ ; & | > <"
printf '%s\\n' "tab\there" 'ünïcødé'
"""


def test_commands_that_look_like_heredoc_delimiters_run_verbatim(sandbox: Sandbox) -> None:
    """Given setup/run text with lines equal to naive heredoc delimiters and shell metacharacters everywhere,
    Then the phase scripts on the instance are exactly the submitted text and bash runs them as written."""
    setup = "EC2JOBS_EOF_() { :; }\nEOF() { echo EOF-function; }\nEOF\n"
    outcome = sandbox.run(make_config(setup=setup, run=HEREDOC_LOOKALIKES))
    assert (sandbox.state / "setup.sh").read_text(encoding="utf-8") == setup
    assert (sandbox.state / "run.sh").read_text(encoding="utf-8") == HEREDOC_LOOKALIKES
    assert outcome.result()["reason"] == "SUCCEEDED"
    lines = outcome.output().splitlines()
    assert lines[:3] == ["EOF-function", "start 0 args", "$HOME `id` $(id)"]
    assert lines[3].endswith("line 7: EC2JOBS_EOF_: command not found")  # a line of its own: run as a command
    assert lines[4:] == ["single double $ back 3 @@JOB_ID@@ ; & | > <", "tab\there", "ünïcødé"]


# -- the job user ------------------------------------------------------------------------------------------------


@pytest.fixture
def open_sandbox() -> Iterator[Sandbox]:
    """A sandbox another user can traverse (pytest's tmp_path is private to us)."""
    base = Path(tempfile.mkdtemp(prefix="ec2jobs-wrapper-"))
    base.chmod(0o755)
    try:
        yield Sandbox(base / "instance")
    finally:
        shutil.rmtree(base, ignore_errors=True)


FORGERIES = r"""
exec 2>/dev/null
S=$EC2JOBS_ROOT/var/lib/ec2jobs
printf 'phase=run\nexit_code=0\nreason=SUCCEEDED\n' >$S/result && echo FORGED-result
printf 'fake\n' >$S/output.log && echo FORGED-output-by-path
python3 -c 'import os; os.ftruncate(1, 0)' 2>/dev/null && echo FORGED-truncate-via-fd
touch $S/relay/drained && echo FORGED-drained
ls $S/relay >/dev/null 2>&1 && echo FORGED-read-relay-dir
echo 'ssh-ed25519 AAAA attacker' >>$EC2JOBS_ROOT/var/lib/root/.ssh/authorized_keys && echo FORGED-login
cat $EC2JOBS_ROOT/etc/ssh/ssh_host_ed25519_key >/dev/null 2>&1 && echo FORGED-host-key
echo honest
exit 1
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser", path=SYSTEM_PATH) is None, reason="needs root")
def test_as_root_the_job_runs_as_the_ssh_user_and_cannot_forge_its_result(open_sandbox: Sandbox) -> None:
    """Given the wrapper runs as root, the job user is an existing unprivileged user (nobody) and the relay user
    another (root here), When the job exits 1 after trying to forge a success (write the result, rewrite or truncate
    the output, write the relay's drained marker, read the relay's directory, add a login key, read
    the host key), Then every attempt fails, the result says EXIT_NONZERO with exit code 1, and the output is
    exactly what the job printed."""
    try:
        nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError:
        pytest.skip("no user 'nobody'")
    for path in (open_sandbox.base, open_sandbox.tools, open_sandbox.shims):
        path.chmod(0o755)
    python = shutil.which("python3", path=SYSTEM_PATH)
    if python:
        (open_sandbox.tools / "python3").symlink_to(python)
    job = make_config(ssh_user="nobody", relay_user="root", setup="id -un", run='id -un; echo "$HOME"\n' + FORGERIES)
    staging = open_sandbox.state / "relay"
    outcome = open_sandbox.run(job)
    assert outcome.result()["reason"] == "EXIT_NONZERO", outcome.output()
    assert outcome.result()["exit_code"] == "1"
    assert outcome.output() == f"nobody\nnobody\n{open_sandbox.root}/home/nobody\nhonest\n"
    assert not (staging / "drained").exists()
    assert open_sandbox.state.stat().st_uid == 0
    for name in ("output.log", "result"):
        assert (open_sandbox.state / name).stat().st_uid == 0
    assert staging.stat().st_uid == 0
    assert (staging.stat().st_mode & 0o777) == 0o700
    assert str((open_sandbox.state / "run.sh").stat().st_uid) == nobody
    assert str(open_sandbox.workspace.stat().st_uid) == nobody


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser", path=SYSTEM_PATH) is None, reason="needs root")
def test_as_root_a_setup_that_exits_0_on_sigterm_is_not_followed_by_run(open_sandbox: Sandbox) -> None:
    """Given the job runs as an unprivileged user (so only its own processes get SIGTERM and its exit code is what
    the wrapper sees) and a setup that traps SIGTERM and exits 0, When it is interrupted, Then run never starts:
    the result is setup, exit code 0, INTERRUPTED."""
    if subprocess.run(["id", "-u", "nobody"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no user 'nobody'")
    for path in (open_sandbox.base, open_sandbox.tools, open_sandbox.shims):
        path.chmod(0o755)
    job = make_config(
        ssh_user="nobody",
        relay_user="root",
        cancel_grace_seconds=5,
        setup="trap 'echo setup got TERM; exit 0' TERM\necho preparing\nwhile :; do sleep 0.1; done",
        run="echo run started",
    )
    relay = follow(open_sandbox, [(b"preparing", "interrupt")])
    try:
        outcome = open_sandbox.run(job)
    finally:
        relay.join()
    assert outcome.result() | {"finished_at": ""} == {
        "phase": "setup", "exit_code": "0", "reason": "INTERRUPTED", "finished_at": ""
    }  # fmt: skip
    assert "run started" not in outcome.output()
    assert outcome.output().splitlines()[-1] == "setup got TERM"


def test_a_git_workdir_is_cloned_at_its_ref_before_setup(sandbox: Sandbox, tmp_path: Path) -> None:
    git = shutil.which("git", path=SYSTEM_PATH)
    if git is None:
        pytest.skip("no git")
    (sandbox.tools / "git").symlink_to(git)
    repo = tmp_path / "repo"
    env = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}

    def run_git(*args: str) -> None:
        subprocess.run([git, "-C", str(repo), *args], check=True, env=env, capture_output=True)

    repo.mkdir()
    run_git("init", "-q")
    (repo / "train.py").write_text("v1\n")
    run_git("add", ".")
    run_git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "-m", "one")
    run_git("tag", "v1")
    (repo / "train.py").write_text("v2\n")
    run_git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "-am", "two")
    job = make_config(setup="cat train.py", run="pwd", inputs={"workdir_url": str(repo), "workdir_ref": "v1"})
    outcome = sandbox.run(job)
    assert outcome.result()["reason"] == "SUCCEEDED", outcome.output()
    assert outcome.output() == f"v1\n{sandbox.workspace}/workdir\n"

    failing = Sandbox(sandbox.base / "second")
    (failing.tools / "git").symlink_to(git)
    missing = make_config(run="echo never", inputs={"workdir_url": str(tmp_path / "nowhere")})
    outcome = failing.run(missing)
    assert outcome.result()["reason"] == "INPUTS_FAILED"
    assert outcome.output().startswith("ec2jobs: cloning the workdir failed: ")


def test_a_private_git_workdir_is_cloned_with_the_token_from_its_secret(sandbox: Sandbox, tmp_path: Path) -> None:
    """workdir {url, token_secret}: git asks GIT_ASKPASS, which answers with the secret's value; the token reaches
    the server (HTTP Basic, as GitHub takes a token) and appears nowhere else. Served on loopback by a dumb-HTTP git
    server that refuses requests without the token."""
    git = shutil.which("git", path=SYSTEM_PATH)
    if git is None or not Path("/usr/lib/git-core/git-remote-http").exists():
        pytest.skip("no git with HTTP support")
    (sandbox.tools / "git").symlink_to(git)
    env = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    work, served = tmp_path / "work", tmp_path / "served"
    work.mkdir()
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.email=t@e", "-c", "user.name=t", "commit", "-q", "-m", "1"],
    ):
        if args[0] == "add":
            (work / "train.py").write_text("private\n")
        subprocess.run([git, "-C", str(work), *args], check=True, env=env, capture_output=True)
    subprocess.run([git, "clone", "-q", "--bare", str(work), str(served / "repo.git")], check=True, env=env)
    subprocess.run([git, "-C", str(served / "repo.git"), "update-server-info"], check=True, env=env)
    token = "ghp_" + "s3cr3t" * 6
    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    seen: list[str | None] = []

    class GitFiles(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GitFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/repo.git"
        job = make_config(setup="cat train.py", run="echo ok", envs={"GH_TOKEN": token},
                          inputs={"workdir_url": url, "workdir_token_secret": "GH_TOKEN"})  # fmt: skip
        outcome = sandbox.run(job)
        assert outcome.result()["reason"] == "SUCCEEDED", outcome.output()
        assert outcome.output() == "private\nok\n"
        assert None in seen  # refused without the token ...
        assert expected in seen  # ... and served with it
        assert token not in (sandbox.state / "wrapper.log").read_text()

        missing = Sandbox(sandbox.base / "second")
        (missing.tools / "git").symlink_to(git)
        unset = make_config(run="echo never", inputs={"workdir_url": url, "workdir_token_secret": "GH_TOKEN"})
        outcome = missing.run(unset)
        assert outcome.result()["reason"] == "INPUTS_FAILED"
        assert outcome.output() == "ec2jobs: workdir.token_secret names GH_TOKEN, which has no value\n"
    finally:
        server.shutdown()


def test_the_job_inherits_no_descriptor_of_the_wrappers_own(sandbox: Sandbox) -> None:
    """The wrapper's nap pipe (its run loop waits on it without starting a process) stays the wrapper's: the job's
    processes hold only their stdin (/dev/null), their output pipe and what bash itself opens (its script)."""
    outcome = sandbox.run(make_config(run="ls -l /proc/$$/fd"))  # the job's shell's descriptors
    held = dict(line.split()[-3::2] for line in outcome.output().splitlines() if " -> " in line)
    assert held["0"] == "/dev/null"
    assert all(not target.startswith("pipe:") for target in held.values()), held
    assert outcome.result()["reason"] == "SUCCEEDED"
