"""Who is who on a sandboxed instance. On EC2 the job runs as the AMI's login user (stripped of sudo) and the relay
logs in as a system user the job wrapper creates; locally, run as root, the sandbox plays the AMI and provides the
login user `ec2jobs-job` (a real unprivileged user on this machine, as the AMI's `ubuntu` is on an instance), and the
wrapper creates `ec2jobs-relay` exactly as it does on EC2. Run as anyone else, one user plays every part (nothing
can switch users), so the separation the wrapper makes on EC2 is not there locally."""

from __future__ import annotations

import atexit
import getpass
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

JOB_USER = "ec2jobs-job"
RELAY_USER = "ec2jobs-relay"
_lock = threading.Lock()


def separated() -> bool:
    """Can the sandboxes run the job and the relay as users of their own? (Only as root.)"""
    return os.geteuid() == 0


def instance_users() -> tuple[str, str]:
    """(job user, relay user) for the local runtime's settings (SSH_USER, RELAY_USER)."""
    if separated():
        return JOB_USER, RELAY_USER
    user = getpass.getuser()
    return user, user


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_login_user(name: str) -> None:
    """Create the AMI's login user on this machine when missing (root only; /etc/passwd's lock is retried)."""
    if not separated() or exists(name):
        return
    with _lock:
        for _ in range(20):
            if exists(name):
                return
            done = subprocess.run(  # noqa: S603 - fixed arguments
                [_useradd(), "--system", "--no-create-home", "--shell", "/bin/bash", "-p", "*", name],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0 or exists(name):
                return
            time.sleep(0.25)
    raise RuntimeError(f"could not create the local user {name!r} for the instance sandboxes")


def _useradd() -> str:
    for candidate in ("/usr/sbin/useradd", "/sbin/useradd"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("useradd is not installed (package passwd)")


_shared_lock = threading.Lock()
_shared: list[Path] = []


def _shared_instances_dir() -> Path:
    """One directory per process for the sandboxes' roots, which the job and relay users can traverse (0711 in the
    world-traversable /tmp): a caller's directory may sit under a private one (pytest's, mode 0700, which another
    pytest session resets at its start), so roots do not live there; removed when the process exits."""
    with _shared_lock:
        if not _shared:
            made = Path(tempfile.mkdtemp(prefix="ec2jobs-instances-"))
            made.chmod(0o711)
            atexit.register(shutil.rmtree, made, True)
            _shared.append(made)
        return _shared[0]


def instance_root(base_dir: Path, instance_id: str) -> Path:
    """Where a sandbox's root is: base_dir/instance_id, which is a link into the shared directory when the job and
    relay run as users of their own (so they can reach it whatever base_dir's parents allow)."""
    wanted = (base_dir / instance_id).absolute()
    if not separated():
        return wanted
    if wanted.is_symlink():
        return wanted.resolve()
    if wanted.exists():  # made by the caller: used as it is (made traversable at boot)
        return wanted
    real = Path(tempfile.mkdtemp(prefix=f"{instance_id}-", dir=_shared_instances_dir()))
    real.chmod(0o755)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    wanted.symlink_to(real, target_is_directory=True)
    return real


def make_traversable(path: Path) -> None:
    """Let other users reach `path` (search permission on each ancestor we own; never read or write): the job and
    relay users must reach the sandbox's files, which may live under a private temporary directory."""
    if not separated():
        return
    for directory in [path, *path.parents]:
        if directory == Path("/"):
            break
        try:
            mode = directory.stat().st_mode
            if directory.stat().st_uid == os.geteuid() and not mode & 0o001:
                directory.chmod((mode & 0o7777) | 0o001)
        except OSError:
            continue
