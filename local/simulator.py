"""The instance simulator (runs inside the emulator process, next to moto's backends): every instance the launch
step creates becomes a local sandbox (local/sandbox.py) that boots the real user data, reachable over real SSH at
its own loopback address; EC2 state changes are published as real "EC2 Instance State-change Notification" events
on the default bus, so the control plane's rule delivers them exactly as on AWS.

pending (sandbox booting) → running (sshd up, the user data started) → shutting-down → terminated (after
TerminateInstances from anyone: the wrapper's aws shim, its `shutdown`, the control plane).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from controlplane.core.provisioning import MANAGED_BY_TAG
from local.sandbox import InstanceSandbox, SandboxConfig

logger = logging.getLogger("ec2jobs.simulator")
EC2_STATE_CHANGE = "EC2 Instance State-change Notification"
_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}
LOOPBACK_BLOCKS = 64  # how many simulators may run at once on this machine (each has its own 127.0.<block>.0/24)
_BLOCK_LOCKS = Path(tempfile.gettempdir()) / "ec2jobs-loopback-blocks"


def claim_loopback_block() -> tuple[int, TextIO]:
    """A block of loopback addresses no other simulator on this machine uses while the returned lock file stays open
    (flock: released when its process ends, however it ends). Two simulators at once (test modules in parallel) would
    otherwise both find 127.0.0.10 free and start two sshds on it; the first simulator keeps 127.0.0.x."""
    _BLOCK_LOCKS.mkdir(parents=True, exist_ok=True)
    for block in range(LOOPBACK_BLOCKS):
        handle = (_BLOCK_LOCKS / f"{block}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return block, handle
    raise RuntimeError(f"all {LOOPBACK_BLOCKS} loopback blocks are held by running instance simulators")


def _ec2_backends() -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends


def publish_state(account: str, region: str, instance_id: str, state: str) -> None:
    """An EC2 state-change event on the default bus, shaped like AWS's."""
    from moto.events.models import events_backends

    events_backends[account][region].put_events(
        [
            {
                "Source": "aws.ec2",
                "DetailType": EC2_STATE_CHANGE,
                "Detail": json.dumps({"instance-id": instance_id, "state": state}),
                "Resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
            }
        ]
    )


def _trusts_ec2(role: Any) -> bool:
    """EC2 hands an instance its role's credentials only if the role's trust policy lets ec2.amazonaws.com assume it."""
    try:
        document = json.loads(role.assume_role_policy_document)
    except (TypeError, ValueError):
        return False
    statements = document.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        services = (statement.get("Principal") or {}).get("Service", []) if isinstance(statement, dict) else []
        services = [services] if isinstance(services, str) else services
        if statement.get("Effect") == "Allow" and "ec2.amazonaws.com" in services:
            return True
    return False


class RoleCredentials:
    """An instance's role credentials as EC2 delivers them through IMDS: an STS session of the instance profile's
    role named after the instance id (which is how ec2:SourceInstanceARN is known), renewed before it expires."""

    LIFETIME = 6 * 3600
    RENEW_BEFORE = 15 * 60

    def __init__(self, account: str, region: str, instance_id: str, role_arn: str) -> None:
        self.account, self.region, self.instance_id, self.role_arn = account, region, instance_id, role_arn
        self._lock = threading.Lock()
        self._current: dict[str, str] | None = None
        self._expires = 0.0

    def __call__(self) -> dict[str, str]:
        from moto.sts.models import sts_backends

        with self._lock:
            if self._current is None or time.time() > self._expires - self.RENEW_BEFORE:
                session = sts_backends[self.account]["aws"].assume_role(
                    region_name=self.region,
                    role_session_name=self.instance_id,
                    role_arn=self.role_arn,
                    policy="",
                    duration=self.LIFETIME,
                    external_id="",
                )
                self._expires = time.time() + self.LIFETIME
                self._current = {
                    "Code": "Success",
                    "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": session.access_key_id,
                    "SecretAccessKey": session.secret_access_key,
                    "Token": session.session_token,
                    "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._expires)),
                }
            return dict(self._current)


def instance_role(account: str, region: str, instance: Any) -> tuple[str, RoleCredentials] | None:
    """(role name, credentials) of the instance profile the instance was launched with, or None."""
    association = _ec2_backends()[account][region].iam_instance_profile_associations.get(str(instance.id))
    roles = list(association.iam_instance_profile.roles) if association is not None else []
    if not roles or not _trusts_ec2(roles[0]):
        return None
    return str(roles[0].name), RoleCredentials(account, region, str(instance.id), str(roles[0].arn))


def _set_state(instance: Any, state: str) -> None:
    from moto.ec2.models.instances import InstanceState

    instance._state = InstanceState(state, _STATE_CODES[state])


_ACTIVE: list[InstanceSimulator] = []  # simulators started in this process (RunInstances tells each)
_ACTIVE_LOCK = threading.Lock()


class InstanceSimulator:
    def __init__(self, endpoint: str, base_dir: Path, poll_seconds: float = 0.2) -> None:
        self.endpoint = endpoint
        self.base_dir = base_dir
        self.poll_seconds = poll_seconds
        self.sandboxes: dict[str, InstanceSandbox] = {}
        self.ended: set[str] = set()
        self._block, self._block_lock = claim_loopback_block()
        self._free = [f"127.0.{self._block}.{n}" for n in range(10, 251)]
        self._lock = threading.Lock()
        self._observing = threading.RLock()  # RunInstances' own thread and the watch loop both observe instances
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="instance-simulator")

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._hook_run_instances()
        self._thread.start()

    def _hook_run_instances(self) -> None:
        """Give a launched instance its loopback address inside RunInstances itself: moto invents a public IP, and
        a caller (the relay) that read it before the watch loop's next tick would try to reach a real-looking
        address (blocked: a 10 s connect timeout, and traffic that must never leave loopback)."""
        from moto.ec2.models.instances import InstanceBackend

        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
            original = InstanceBackend.run_instances
            if getattr(original, "_ec2jobs_simulator", False):
                return

            def run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
                reservation = original(backend, *args, **kwargs)
                with _ACTIVE_LOCK:
                    running = [s for s in _ACTIVE if not s._stop.is_set()]
                for simulator in running:
                    for instance in reservation.instances:
                        try:
                            simulator._observe(backend.account_id, backend.region_name, instance)
                        except Exception:  # the watch loop retries on its next tick
                            logger.exception("instance simulator could not start %s at launch", instance.id)
                return reservation

            run_instances._ec2jobs_simulator = True  # type: ignore[attr-defined]
            setattr(InstanceBackend, "run_instances", run_instances)  # noqa: B010 - moto's method, patched once

    def stop(self) -> None:
        self._stop.set()
        with _ACTIVE_LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        self._thread.join(5)
        for sandbox in list(self.sandboxes.values()):
            sandbox.shutdown()
        self._block_lock.close()  # its addresses are free for the next simulator

    # -- the watch loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                logger.exception("instance simulator tick failed")
            time.sleep(self.poll_seconds)

    def _tick(self) -> None:
        for account, regions in list(_ec2_backends().items()):
            for region, backend in list(regions.items()):
                for instance in list(backend.all_instances()):
                    self._observe(account, region, instance)

    def _observe(self, account: str, region: str, instance: Any) -> None:
        with self._observing:
            self._observe_locked(account, region, instance)

    def _observe_locked(self, account: str, region: str, instance: Any) -> None:
        instance_id = str(instance.id)
        state = str(instance._state.name)
        if instance_id in self.ended:
            return
        if instance_id not in self.sandboxes:
            tags = {tag["key"]: tag["value"] for tag in instance.get_tags()} if hasattr(instance, "get_tags") else {}
            if state in {"terminated", "shutting-down"} or tags.get(MANAGED_BY_TAG) != "ec2jobs":
                return
            self._launch(account, region, instance)
        elif state in {"terminated", "shutting-down", "stopped"}:
            self._end(account, region, instance)

    def _launch(self, account: str, region: str, instance: Any) -> None:
        address = self._address()
        _set_state(instance, "pending")
        if instance.nics[0].public_ip:  # reachable at its (loopback) address; without one (local/strict_ec2.py) the
            instance.nics[0].public_ip = address  # sandbox still boots there, but EC2 reports no public IPv4 address
        raw = base64.b64decode(str(instance.user_data)) if instance.user_data else b""
        role = instance_role(account, region, instance)
        sandbox = InstanceSandbox(
            SandboxConfig(
                instance_id=str(instance.id),
                region=region,
                address=address,
                user_data=raw,
                endpoint_url=self.endpoint,
                base_dir=self.base_dir,
                ssh_port=int(os.environ.get("EC2JOBS_SANDBOX_SSH_PORT", "22")),
                instance_type=str(instance.instance_type),
                availability_zone=str(getattr(instance._placement, "zone", "") or ""),
                instance_role=role[0] if role else "",
                role_credentials=role[1] if role else None,
            )
        )
        self.sandboxes[str(instance.id)] = sandbox
        publish_state(account, region, str(instance.id), "pending")
        threading.Thread(
            target=self._boot, args=(account, region, instance, sandbox), daemon=True, name=f"boot-{instance.id}"
        ).start()

    def _address(self) -> str:
        """The next loopback address whose SSH port is free (an sshd left over by another run may hold one)."""
        port = int(os.environ.get("EC2JOBS_SANDBOX_SSH_PORT", "22"))
        with self._lock:
            while self._free:
                address = self._free.pop(0)
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind((address, port))
                    except OSError:
                        logger.warning("%s:%s is taken; skipping it", address, port)
                        continue
                return address
        raise RuntimeError("no free loopback address left for another instance sandbox")

    def _boot(self, account: str, region: str, instance: Any, sandbox: InstanceSandbox) -> None:
        try:
            sandbox.boot()
        except Exception:
            logger.exception("instance %s failed to boot", instance.id)
            instance.terminate()
            return
        if instance._state.name == "pending":
            _set_state(instance, "running")
            publish_state(account, region, str(instance.id), "running")

    def _end(self, account: str, region: str, instance: Any) -> None:
        instance_id = str(instance.id)
        self.ended.add(instance_id)
        final = "terminated" if instance._state.name != "stopped" else "stopped"
        publish_state(account, region, instance_id, "shutting-down")
        sandbox = self.sandboxes.pop(instance_id)
        sandbox.shutdown()
        publish_state(account, region, instance_id, final)
