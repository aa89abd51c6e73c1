"""The embedded AWS emulator: moto (pinned) in server mode on loopback, in its own process.

    python -m local.emulator [--port N] [--enforce-iam]

prints one JSON line when ready: {"endpoint": ..., "access_key_id": ..., "secret_access_key": ...}. With
--enforce-iam, an administrator user is created first and then moto's IAM enforcement is switched on, so every
later call is authenticated and authorised against IAM policies (how provider keys are held to the seed policy).
The credentials printed are that administrator's: the control plane's own identity in the emulator.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.guard import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, assert_loopback_url, install_network_guard

REPO = Path(__file__).resolve().parent.parent
AMIS_FILE = REPO / "local" / "data" / "amis.json"  # DLAMI + Ubuntu images (moto ships neither)
ADMIN_USER = "ec2jobs-control-plane"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class EmulatorInfo:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    enforce_iam: bool


class EmulatorProcess:
    """A running emulator subprocess; stop() ends it."""

    def __init__(self, process: subprocess.Popen[str], info: EmulatorInfo) -> None:
        self.process = process
        self.info = info

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    *,
    enforce_iam: bool = False,
    port: int = 0,
    timeout: float = 60.0,
    simulate_instances: bool = False,
    sandbox_dir: Path | None = None,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> EmulatorProcess:
    """Start the emulator in a subprocess and wait until it is serving."""
    # -X faulthandler: a crash of the interpreter (a signal) leaves its threads' tracebacks on stderr
    command = [sys.executable, "-X", "faulthandler", "-m", "local.emulator", "--port", str(port)]
    if enforce_iam:
        command.append("--enforce-iam")
    if simulate_instances:
        command.append("--simulate-instances")
    if sandbox_dir is not None:
        command += ["--sandbox-dir", str(sandbox_dir)]
    env = dict(os.environ) | (env or {})
    env["MOTO_AMIS_PATH"] = str(AMIS_FILE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "lambdas"), env.get("PYTHONPATH")]))
    stderr = log_file.open("ab") if log_file is not None else None
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    ready: dict[str, Any] = {}

    def read_ready_line() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line:
            ready.update(json.loads(line))

    reader = threading.Thread(target=read_ready_line, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready:
        process.kill()
        raise RuntimeError(f"the emulator did not start within {timeout:.0f}s (exit code {process.poll()})")
    return EmulatorProcess(process, EmulatorInfo(**ready))


def _bootstrap_admin(endpoint: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="administrator", PolicyDocument=json.dumps(ADMIN_POLICY))
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def enable_iam_enforcement() -> None:
    """From now on every request is authenticated and checked against IAM policies. Runs inside the emulator
    process: it sets what moto's INITIAL_NO_AUTH_ACTION_COUNT setting controls (tests/unit/test_moto_contract.py)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


LOG_LEVEL_ENV = "EC2JOBS_EMULATOR_LOG_LEVEL"  # the control plane's loggers in the emulator (default WARNING)
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _WithExtras(logging.Formatter):
    """Time, thread, logger and message, then the record's `extra` fields (job_id, shard, error_type, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        return f"{line} {json.dumps(extras, default=str)}" if extras else line


def configure_logging() -> None:
    """The emulator's log (its standard error: the runtime's emulator.log): warnings and up, each with its time,
    thread (a relay shard's job loops are named `relay-job:<job id>`) and extra fields."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WithExtras("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("controlplane").setLevel(os.environ.get(LOG_LEVEL_ENV, "WARNING").upper())


def serve(port: int, enforce_iam: bool, simulate_instances: bool = False, sandbox_dir: str | None = None) -> None:
    install_network_guard()
    configure_logging()
    os.environ.setdefault("MOTO_AMIS_PATH", str(AMIS_FILE))  # read when moto's EC2 models are imported
    from local import moto_patches, strict_ec2

    moto_patches.apply()
    strict_ec2.apply()  # EC2 as strict as AWS where moto is kinder (public IPv4 at launch)
    moto_patches.execute_state_machines()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    from local import ddb_atomic, ddb_partitions, faults, iam_conditions

    ddb_partitions.install_from_environment()  # per-partition write limit; EC2JOBS_DDB_PARTITION_WCU=0: off
    ddb_atomic.install()  # each write's condition check and write one atomic step, as on AWS
    iam_conditions.install(server)  # conditions, boundaries, PassRole, instance roles: as AWS evaluates them
    if faults.install(server) is not None:  # EC2JOBS_FAULTS_FILE: the e2e fault matrix's plan
        logging.getLogger("ec2jobs.faults").warning("fault injection is on: %s", os.environ[faults.PLAN_ENV])
    host, bound_port = server.get_host_and_port()
    endpoint = assert_loopback_url(f"http://{host}:{bound_port}")
    # What runs inside this process (in-process Lambdas, Step Functions' own Lambda client, the instance
    # simulator) reaches the emulator here.
    os.environ["MOTO_PORT"] = str(bound_port)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    key_id, secret = FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY
    if enforce_iam:
        key_id, secret = _bootstrap_admin(endpoint)
        enable_iam_enforcement()
    simulator = None
    if simulate_instances:
        from local.simulator import InstanceSimulator

        simulator = InstanceSimulator(endpoint, Path(sandbox_dir or REPO / ".ec2jobs" / "instances"))
        simulator.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    info = {"endpoint": endpoint, "access_key_id": key_id, "secret_access_key": secret, "enforce_iam": enforce_iam}
    print(json.dumps(info), flush=True)
    # Nobody reads the pipe after the ready line: from now on, what is written to standard output (the Lambda
    # handlers' Powertools loggers) goes to the log file with standard error, rather than filling the pipe's 64 KB
    # and blocking the writer.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    while not stop.is_set():
        time.sleep(0.2)
    if simulator is not None:
        simulator.stop()
    server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the ec2jobs AWS emulator (moto) on loopback.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--enforce-iam", action="store_true", help="authenticate and authorise every call")
    parser.add_argument(
        "--simulate-instances", action="store_true", help="run every launched instance as a local sandbox"
    )
    parser.add_argument("--sandbox-dir", help="where instance sandboxes live (default .ec2jobs/instances)")
    args = parser.parse_args(argv)
    serve(args.port, args.enforce_iam, args.simulate_instances, args.sandbox_dir)


if __name__ == "__main__":
    main()
