"""The instance sandbox of the local instance simulator (local/sandbox.py): a real sshd, an IMDSv2 server and the
user data running with the shutdown/aws/systemctl shims, against the moto emulator for the EC2 calls."""

from __future__ import annotations

import base64
import getpass
import gzip
import io
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest

from controlplane.adapters.ssh import InstanceNotReady, Remote, SshConnector
from controlplane.core import provisioning, sshkeys
from controlplane.core.bundle import StartBundle
from controlplane.core.userdata import WrapperConfig, render
from local import emulator, sandbox, sshd, users
from local.guard import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY
from local.sandbox import InstanceSandbox, SandboxConfig

REGION = "us-east-1"
NO_EMULATOR = "http://127.0.0.1:9"  # for sandboxes that never call EC2
_HAVE_SSHD = any(os.access(path, os.X_OK) for path in sshd.SSHD_CANDIDATES)
if not _HAVE_SSHD and os.environ.get("EC2JOBS_REQUIRE_SSHD") == "1":  # `make test` installs it: never skip there
    raise RuntimeError("OpenSSH sshd is required (apt-get install openssh-server); make test installs it")
pytestmark = pytest.mark.skipif(not _HAVE_SSHD, reason="OpenSSH sshd is not installed (make test installs it)")


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status


@pytest.fixture(scope="module")
def ec2() -> Iterator[Any]:
    process = emulator.start()
    try:
        yield boto3.client(
            "ec2",
            region_name=REGION,
            endpoint_url=process.info.endpoint,
            aws_access_key_id=FAKE_ACCESS_KEY_ID,
            aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
        )
    finally:
        process.stop()


def launch(ec2: Any, team: str | None = None) -> str:
    """An instance; with `team`, tagged for it and launched with its instance profile (as the launch step does)."""
    images = ec2.describe_images(Owners=["099720109477"])["Images"] or ec2.describe_images()["Images"]
    extra: dict[str, Any] = {}
    if team is not None:
        extra = {
            "IamInstanceProfile": {"Name": team_profile(ec2, team)},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": provisioning.instance_tags(team, "p-1", f"job-{team}", None)}
            ],
        }
    reservation = ec2.run_instances(
        ImageId=images[0]["ImageId"], MinCount=1, MaxCount=1, InstanceType="t3.micro", **extra
    )
    return str(reservation["Instances"][0]["InstanceId"])


def team_profile(ec2: Any, team: str) -> str:
    """The team's instance role (self-termination policy) and profile, as bootstrap creates them; idempotent."""
    iam = boto3.client(
        "iam",
        region_name=REGION,
        endpoint_url=ec2.meta.endpoint_url,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )
    names = provisioning.TeamResources("transformerlab", team)
    try:
        iam.get_instance_profile(InstanceProfileName=names.instance_profile)
        return names.instance_profile
    except iam.exceptions.NoSuchEntityException:
        pass
    trust = provisioning.policy_json(provisioning.role_trust_policy())
    iam.create_role(RoleName=names.role, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(
        RoleName=names.role,
        PolicyName=provisioning.SELF_TERMINATION_POLICY_NAME,
        PolicyDocument=provisioning.policy_json(provisioning.self_termination_policy(team)),
    )
    iam.create_instance_profile(InstanceProfileName=names.instance_profile)
    iam.add_role_to_instance_profile(InstanceProfileName=names.instance_profile, RoleName=names.role)
    return names.instance_profile


def role_of(ec2: Any, instance_id: str, team: str) -> dict[str, Any]:
    """SandboxConfig fields for the instance's role credentials: what the simulator gives an instance (an STS
    session of the profile's role named after the instance)."""
    role = provisioning.TeamResources("transformerlab", team).role
    sts = boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=ec2.meta.endpoint_url,
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )

    def credentials() -> dict[str, str]:
        issued = sts.assume_role(RoleArn=f"arn:aws:iam::123456789012:role/{role}", RoleSessionName=instance_id)
        c = issued["Credentials"]
        return {
            "Code": "Success",
            "AccessKeyId": c["AccessKeyId"],
            "SecretAccessKey": c["SecretAccessKey"],
            "Token": c["SessionToken"],
            "Expiration": c["Expiration"].isoformat(),
        }

    return {"instance_role": role, "role_credentials": credentials}


def state(ec2: Any, instance_id: str) -> str:
    return str(ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"])


def terminated(ec2: Any, instance_id: str) -> bool:
    return state(ec2, instance_id) in ("shutting-down", "terminated")


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[..., InstanceSandbox]]:
    made: list[InstanceSandbox] = []

    def make(address: str, user_data: bytes | str, **overrides: Any) -> InstanceSandbox:
        values: dict[str, Any] = {
            "instance_id": f"i-{len(made):017x}",
            "region": REGION,
            "address": address,
            "user_data": user_data.encode() if isinstance(user_data, str) else user_data,
            "endpoint_url": NO_EMULATOR,
            "base_dir": tmp_path,
            "ssh_port": sshd.free_port(address),
        }
        box = InstanceSandbox(SandboxConfig(**(values | overrides)))
        made.append(box)
        box.boot()
        return box

    try:
        yield make
    finally:
        for box in made:
            box.shutdown()


def server_key(host: str, port: int) -> paramiko.PKey:
    transport = paramiko.Transport((host, port))
    try:
        transport.start_client(timeout=5)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def pinned_client(host: str, port: int, host_public: str, login: sshkeys.KeyPair) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kind, blob = host_public.split()[:2]
    client.get_host_keys().add(f"[{host}]:{port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    client.connect(
        host,
        port=port,
        username=getpass.getuser(),
        pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(login.private_openssh)),
        timeout=5,
        allow_agent=False,
        look_for_keys=False,
    )
    return client


def imds(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


# -- boot: sshd, host keys, IMDS ---------------------------------------------------------------------------------


def test_boot_serves_a_cloud_init_host_key_until_the_user_data_pins_the_jobs_key(make_sandbox: Any) -> None:
    pinned = sshkeys.derive_host_key(sshkeys.new_seed(), "job-sandbox-ssh")
    login = sshkeys.generate("relay")
    user = getpass.getuser()
    script = f"""#!/bin/bash
set -eu
while [ ! -e "$EC2JOBS_ROOT/go" ]; do sleep 0.05; done
cat >"$EC2JOBS_ROOT/etc/ssh/ssh_host_ed25519_key" <<'EOF'
{pinned.private_openssh.rstrip()}
EOF
chmod 600 "$EC2JOBS_ROOT/etc/ssh/ssh_host_ed25519_key"
mkdir -p "$EC2JOBS_ROOT/home/{user}/.ssh"
echo '{login.public_openssh}' >"$EC2JOBS_ROOT/home/{user}/.ssh/authorized_keys"
systemctl reload ssh
touch "$EC2JOBS_ROOT/keys-installed"
"""
    box = make_sandbox("127.0.0.201", script)
    assert box.ssh is not None
    host, port = box.ssh.host, box.ssh.port
    assert host == "127.0.0.201"

    first = server_key(host, port)  # the random cloud-init key, not the job's
    cloud_init = (box.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert first.get_base64() == cloud_init
    assert first.get_base64() != sshkeys.key_blob(pinned.public_openssh)
    with pytest.raises(paramiko.BadHostKeyException):
        pinned_client(host, port, pinned.public_openssh, login)

    (box.root / "go").touch()
    wait_for(lambda: (box.root / "keys-installed").exists(), what="the user data to install the keys")
    client = pinned_client(host, port, pinned.public_openssh, login)
    try:
        _, stdout, _ = client.exec_command('printf %s "$EC2JOBS_ROOT"')
        assert stdout.read().decode() == str(box.root)
    finally:
        client.close()
    log = (box.root / sandbox.SYSTEMCTL_LOG).read_text()
    assert "systemctl reload ssh" in log
    assert "reloaded" in log


def test_imdsv2_requires_a_token_and_answers_for_the_instance(make_sandbox: Any) -> None:
    box = make_sandbox(
        "127.0.0.202", "#!/bin/bash\ntrue\n", instance_id="i-0abc123def4567890", instance_type="g5.xlarge"
    )
    base = box.imds_url
    assert base.startswith("http://127.0.0.202:")

    assert imds(f"{base}/latest/meta-data/instance-id")[0] == 401
    assert imds(f"{base}/latest/meta-data/instance-id", headers={sandbox.TOKEN_HEADER: "forged"})[0] == 401
    assert imds(f"{base}/latest/api/token", method="PUT")[0] == 400  # the TTL header is required
    status, token = imds(f"{base}/latest/api/token", method="PUT", headers={sandbox.TOKEN_TTL_HEADER: "300"})
    assert status == 200
    assert token

    def get(path: str) -> tuple[int, str]:
        return imds(f"{base}/latest/{path}", headers={sandbox.TOKEN_HEADER: token})

    assert get("meta-data/instance-id") == (200, "i-0abc123def4567890")
    assert get("meta-data/placement/region") == (200, REGION)
    assert get("meta-data/placement/availability-zone") == (200, f"{REGION}a")
    assert get("meta-data/instance-type") == (200, "g5.xlarge")
    assert get("meta-data/public-ipv4") == (200, "127.0.0.202")
    assert "placement/" in get("meta-data/")[1].splitlines()
    assert get("meta-data/spot/instance-action")[0] == 404
    box.set_metadata("spot/instance-action", '{"action": "terminate"}')
    assert get("meta-data/spot/instance-action") == (200, '{"action": "terminate"}')
    assert get("user-data") == (200, "#!/bin/bash\ntrue\n")
    wait_for(lambda: box.exit_code == 0, what="the user data to finish")


# -- the job wrapper, end to end -----------------------------------------------------------------------------------


@pytest.mark.emulator
def test_the_job_wrapper_runs_in_a_sandbox_and_terminates_its_instance_through_the_aws_shim(
    make_sandbox: Any, ec2: Any
) -> None:
    instance_id = launch(ec2, "team-42")
    job_id = "job-0123456789abcdef0123"
    team = sshkeys.generate("team")
    host_key = sshkeys.derive_host_key(sshkeys.new_seed(), job_id)
    job_user, relay_user = users.instance_users()
    config = WrapperConfig(
        job_id=job_id,
        team_id="team-42",
        instance_type="t3.micro",
        max_runtime_seconds=60,
        drain_timeout_seconds=20,
        ssh_user=job_user,
        relay_user=relay_user,
        ssh_authorized_key=team.public_openssh,
        host_private_key=host_key.private_openssh,
        host_public_key=host_key.public_openssh,
    )
    started = time.time()
    box = make_sandbox(
        "127.0.0.203",
        render(config),
        instance_id=instance_id,
        endpoint_url=ec2.meta.endpoint_url,
        instance_type="t3.micro",
        **role_of(ec2, instance_id, "team-42"),
    )
    state_dir = box.root / "var/lib/ec2jobs"
    start = StartBundle(
        job_id=job_id, team_id="team-42", instance_type="t3.micro", envs={"GREETING": "hello from the sandbox"},
        setup="echo setting up", run='echo "$GREETING"; command -v shutdown; id -un',
    )  # fmt: skip
    assert box.ssh is not None

    def deliver() -> bool:  # the relay's first act, over SSH as the relay user with the pinned host key
        try:
            session = SshConnector(connect_timeout=5).connect(
                Remote(box.ssh.host, box.ssh.port, relay_user), team.private_openssh, host_key.public_openssh
            )
        except InstanceNotReady:
            return False
        try:
            return session.deliver_bundle(start.tar())
        finally:
            session.close()

    wait_for(deliver, what="the start bundle delivered")
    wait_for(lambda: (state_dir / "result").exists(), what="the wrapper's result")
    result = dict(line.split("=", 1) for line in (state_dir / "result").read_text().splitlines())
    assert result["reason"] == "SUCCEEDED", (state_dir / "wrapper.log").read_text()
    output = (state_dir / "output.log").read_text()
    assert "setting up\nhello from the sandbox\n" in output
    assert f"{sandbox.SHIM_DIR}/shutdown" in output  # a login shell still finds the shims first
    assert output.endswith(f"\n{job_user}\n")  # the job runs as the AMI's login user, not as the relay

    # the deadline sleeper was scheduled by `shutdown -h +11` (60 s + the default 600 s grace, rounded up)
    schedule = sandbox.read_schedule(box.root)
    assert schedule["spec"] == "+11"
    assert started + 11 * 60 - 5 <= float(schedule["due"]) <= time.time() + 11 * 60
    sleeper = int(schedule["pid"])
    assert not gone(sleeper)

    # the relay's part, over SSH with the pinned host key: status, then the drained marker
    assert box.ssh is not None
    session = SshConnector(connect_timeout=5).connect(
        Remote(box.ssh.host, box.ssh.port, relay_user), team.private_openssh, host_key.public_openssh
    )
    try:
        status, size = session.status()
        assert status is not None
        assert status["reason"] == "SUCCEEDED"
        assert size == len(output.encode())
        assert state(ec2, instance_id) == "running"
        assert session.mark_drained()
    finally:
        session.close()

    wait_for(lambda: terminated(ec2, instance_id), what="the instance to be terminated in the emulator")
    wait_for(lambda: box.exit_code == 0, what="the wrapper to exit")
    wrapper_log = (state_dir / "wrapper.log").read_text()
    assert f"terminating: aws ec2 terminate-instances {instance_id} ({REGION}) accepted" in wrapper_log
    assert "TerminatingInstances" in wrapper_log  # the shim's JSON, as the real CLI prints it
    assert "shutdown now" not in (box.root / sandbox.SHUTDOWN_LOG).read_text()

    box.shutdown()  # what the simulator does on the terminated state
    wait_for(lambda: gone(sleeper), timeout=3, what="the deadline sleeper to be killed")


# -- the shims ------------------------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_the_aws_shim_acts_with_the_instance_role_and_may_terminate_only_its_own_instance(
    make_sandbox: Any, ec2: Any
) -> None:
    mine = launch(ec2, "team-7")
    same_team_other_job, other_team = launch(ec2, "team-7"), launch(ec2, "team-8")
    script = f"""#!/bin/bash
test -z "${{AWS_ACCESS_KEY_ID:-}}" && echo no-keys-in-env >"$EC2JOBS_ROOT/env"
aws ec2 terminate-instances --instance-ids {other_team} 2>"$EC2JOBS_ROOT/other.err"; echo $? >"$EC2JOBS_ROOT/other.rc"
aws ec2 terminate-instances --instance-ids {same_team_other_job} 2>"$EC2JOBS_ROOT/job.err"
echo $? >"$EC2JOBS_ROOT/job.rc"
aws ec2 terminate-instances --instance-ids {mine} >/dev/null; echo $? >"$EC2JOBS_ROOT/mine.rc"
"""
    box = make_sandbox(
        "127.0.0.206", script, instance_id=mine, endpoint_url=ec2.meta.endpoint_url, **role_of(ec2, mine, "team-7")
    )
    wait_for(lambda: (box.root / "mine.rc").exists(), what="the three aws calls")
    assert (box.root / "env").read_text().strip() == "no-keys-in-env"
    for name in ("other", "job"):
        assert (box.root / f"{name}.rc").read_text().strip() == "254"
        assert "(UnauthorizedOperation)" in (box.root / f"{name}.err").read_text()
    assert (box.root / "mine.rc").read_text().strip() == "0"
    assert terminated(ec2, mine)
    assert state(ec2, other_team) == "running"
    assert state(ec2, same_team_other_job) == "running"


@pytest.mark.emulator
def test_without_an_instance_role_the_aws_shim_finds_no_credentials(make_sandbox: Any, ec2: Any) -> None:
    instance_id = launch(ec2)
    script = f"""#!/bin/bash
aws ec2 terminate-instances --instance-ids {instance_id} 2>"$EC2JOBS_ROOT/aws.err"; echo $? >"$EC2JOBS_ROOT/aws.rc"
"""
    box = make_sandbox("127.0.0.207", script, instance_id=instance_id, endpoint_url=ec2.meta.endpoint_url)
    wait_for(lambda: (box.root / "aws.rc").exists(), what="the aws call")
    assert (box.root / "aws.rc").read_text().strip() == "253"
    assert "Unable to locate credentials" in (box.root / "aws.err").read_text()
    assert state(ec2, instance_id) == "running"


@pytest.mark.emulator
def test_shutdown_now_terminates_the_instance_and_unsupported_aws_commands_fail_clearly(
    make_sandbox: Any, ec2: Any
) -> None:
    instance_id = launch(ec2)
    script = """#!/bin/bash
aws s3 ls 2>"$EC2JOBS_ROOT/aws.err"
echo $? >"$EC2JOBS_ROOT/aws.rc"
shutdown -h now
echo $? >"$EC2JOBS_ROOT/shutdown.rc"
"""
    box = make_sandbox("127.0.0.204", script, instance_id=instance_id, endpoint_url=ec2.meta.endpoint_url)
    wait_for(lambda: terminated(ec2, instance_id), what="the instance to be terminated")
    assert (box.root / "aws.rc").read_text().strip() == "2"
    assert sandbox.UNSUPPORTED_AWS in (box.root / "aws.err").read_text()
    wait_for(lambda: (box.root / "shutdown.rc").exists(), what="shutdown to return")
    assert (box.root / "shutdown.rc").read_text().strip() == "0"
    log = (box.root / sandbox.SHUTDOWN_LOG).read_text()
    assert "shutdown -h now" in log
    assert f"TerminateInstances {instance_id} ({REGION}) accepted" in log


@pytest.mark.emulator
def test_a_scheduled_shutdown_can_be_cancelled_and_otherwise_terminates_when_due(make_sandbox: Any, ec2: Any) -> None:
    instance_id = launch(ec2)
    script = """#!/bin/bash
shutdown -h +5 'first'
cp "$EC2JOBS_ROOT/var/lib/ec2jobs-sim/scheduled-shutdown" "$EC2JOBS_ROOT/first-schedule"
shutdown -c
[ -e "$EC2JOBS_ROOT/var/lib/ec2jobs-sim/scheduled-shutdown" ] || touch "$EC2JOBS_ROOT/cancelled"
shutdown -h +1
"""
    box = make_sandbox(
        "127.0.0.205",
        script,
        instance_id=instance_id,
        endpoint_url=ec2.meta.endpoint_url,
        shutdown_minute_seconds=1.0,
    )
    wait_for(lambda: box.exit_code is not None, what="the user data to finish")
    assert (box.root / "cancelled").exists()
    first = dict(line.split("=", 1) for line in (box.root / "first-schedule").read_text().splitlines())
    assert gone(int(first["pid"]))
    assert sandbox.read_schedule(box.root)["spec"] == "+1"
    wait_for(lambda: terminated(ec2, instance_id), timeout=10, what="the scheduled shutdown to terminate")
    assert "fired_at" in sandbox.read_schedule(box.root)


def test_shutdown_kills_every_process_of_the_instance_and_stops_its_servers(make_sandbox: Any) -> None:
    login = sshkeys.generate("relay")
    script = f"""#!/bin/bash
mkdir -p "$EC2JOBS_ROOT/home/{getpass.getuser()}/.ssh"
echo '{login.public_openssh}' >"$EC2JOBS_ROOT/home/{getpass.getuser()}/.ssh/authorized_keys"
sleep 1000 &
echo $! >"$EC2JOBS_ROOT/sleep.pid"
setsid sleep 1001 &  # a daemon that left the process group
echo $! >"$EC2JOBS_ROOT/daemon.pid"
timeout 1000 sleep 1002 &  # timeout makes its own process group
echo $! >"$EC2JOBS_ROOT/timeout.pid"
touch "$EC2JOBS_ROOT/started"
wait
"""
    box = make_sandbox("127.0.0.206", script)
    wait_for(lambda: (box.root / "started").exists(), what="the user data to start its processes")
    pids = [int((box.root / f"{name}.pid").read_text()) for name in ("sleep", "daemon", "timeout")]
    assert box.ssh is not None
    ssh_address = (box.ssh.host, box.ssh.port)
    imds_address = box.imds_url.removeprefix("http://").split(":")
    host_key = (box.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    client = pinned_client(box.ssh.host, box.ssh.port, host_key, login)  # an SSH session (like the relay's tail -F)
    client.exec_command('echo $$ >"$EC2JOBS_ROOT/session.pid"; exec sleep 1003')
    wait_for(lambda: (box.root / "session.pid").exists(), what="the SSH session to start")
    pids.append(int((box.root / "session.pid").read_text()))
    assert box.running
    assert not any(gone(pid) for pid in pids)

    started = time.monotonic()
    box.shutdown()
    client.close()
    assert time.monotonic() - started < 2
    assert not box.running
    assert all(gone(pid) for pid in pids)
    for host, port in (ssh_address, (imds_address[0], int(imds_address[1]))):
        with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
            pass
    box.shutdown()  # idempotent


def test_systemctl_for_other_units_is_a_no_op_and_shims_refuse_outside_a_sandbox(make_sandbox: Any) -> None:
    script = """#!/bin/bash
systemctl daemon-reload; echo "daemon-reload $?" >>"$EC2JOBS_ROOT/rc"
systemctl restart nvidia-persistenced.service; echo "restart $?" >>"$EC2JOBS_ROOT/rc"
systemctl is-active ssh >/dev/null; echo "is-active $?" >>"$EC2JOBS_ROOT/rc"
shutdown -r now 2>/dev/null; echo "reboot $?" >>"$EC2JOBS_ROOT/rc"
shutdown -h tomorrow 2>/dev/null; echo "bad-time $?" >>"$EC2JOBS_ROOT/rc"
"""
    box = make_sandbox("127.0.0.207", gzip.compress(script.encode()))  # gzipped user data runs too
    wait_for(lambda: box.exit_code is not None, what="the user data to finish")
    codes = dict(line.split() for line in (box.root / "rc").read_text().splitlines())
    assert codes == {"daemon-reload": "0", "restart": "0", "is-active": "0", "reboot": "1", "bad-time": "1"}

    for shim in ("aws", "shutdown", "systemctl"):
        outside = subprocess.run(
            [str(sandbox.SHIM_DIR / shim), "now"],
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert outside.returncode == 1
        assert "not inside an instance sandbox" in outside.stderr


def test_a_failed_boot_leaves_nothing_running(tmp_path: Path) -> None:
    address = "127.0.0.208"
    with socket.socket() as taken:
        taken.bind((address, 0))
        taken.listen()
        config = SandboxConfig(
            instance_id="i-0000000000000beef",
            region=REGION,
            address=address,
            user_data=b"#!/bin/bash\nsleep 1000\n",
            endpoint_url=NO_EMULATOR,
            base_dir=tmp_path,
            ssh_port=taken.getsockname()[1],
        )
        box = InstanceSandbox(config)
        try:
            with pytest.raises(sshd.SshdUnavailable, match="could not listen"):
                box.boot()  # sshd cannot bind: the port answers, but not with this sshd
            assert box.ssh is None or box.ssh.process.poll() is not None
            assert not box.running
            with pytest.raises(RuntimeError, match="already booted"):
                box.boot()
        finally:
            box.shutdown()


def test_the_config_refuses_non_loopback_addresses_and_endpoints(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "instance_id": "i-1",
        "region": REGION,
        "address": "127.0.0.9",
        "user_data": b"",
        "endpoint_url": NO_EMULATOR,
        "base_dir": tmp_path,
    }
    SandboxConfig(**values)
    with pytest.raises(ValueError, match="loopback"):
        SandboxConfig(**(values | {"address": "10.0.0.5"}))
    with pytest.raises(sandbox.RealAwsRefused):
        SandboxConfig(**(values | {"endpoint_url": "https://ec2.us-east-1.amazonaws.com"}))
    with pytest.raises(ValueError, match="identifier"):
        SandboxConfig(**(values | {"instance_id": "../i-1"}))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-h", "now"], ("poweroff", 0.0)),
        (["-P", "now"], ("poweroff", 0.0)),
        (["-h", "0"], ("poweroff", 0.0)),
        (["now"], ("poweroff", 0.0)),
        (["-h", "+11"], ("poweroff", 11.0)),
        (["-h", "+5", "going", "down"], ("poweroff", 5.0)),
        ([], ("poweroff", 1.0)),
        (["-c"], ("cancel", 0.0)),
        (["-r", "now"], ("reboot", 0.0)),
        (["-h", "13:30"], ("poweroff", 30.0)),
    ],
)
def test_shutdown_arguments_are_parsed_like_systemd(argv: list[str], expected: tuple[str, float]) -> None:
    request = sandbox.parse_shutdown(argv, now=datetime(2025, 1, 1, 13, 0))
    assert (request.action, request.delay_minutes) == expected


@pytest.mark.parametrize(
    "argv",
    [["s3", "ls"], ["ec2", "describe-instances"], ["ec2", "terminate-instances"], ["--version"]],
)
def test_only_ec2_terminate_instances_is_an_aws_command(argv: list[str]) -> None:
    with pytest.raises(ValueError, match=r"."):
        sandbox.parse_aws(argv)


def test_aws_terminate_instances_arguments() -> None:
    argv = ["--region", "eu-west-1", "ec2", "terminate-instances", "--instance-ids", "i-1", "i-2", "--output=json"]
    assert sandbox.parse_aws(argv) == ("eu-west-1", ["i-1", "i-2"])
    with pytest.raises(sandbox.RealAwsRefused):
        sandbox.parse_aws([*argv, "--endpoint-url", "https://ec2.us-east-1.amazonaws.com"])
