"""A real OpenSSH sshd for one sandboxed "instance": loopback only, its own config, host key and authorized keys
under the sandbox root (the same paths the job wrapper writes, prefixed by EC2JOBS_ROOT, which sshd passes to
sessions with SetEnv). Used by the relay tests and the instance simulator."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from local.guard import is_loopback_host

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


class SshdUnavailable(RuntimeError):
    pass


def sshd_binary() -> str:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("sshd")
    if found:
        return found
    raise SshdUnavailable("OpenSSH sshd is not installed: apt-get install openssh-server (make test does this)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class SshServer:
    host: str
    port: int
    root: Path
    config: Path
    process: subprocess.Popen[bytes]

    def reload(self) -> None:
        """SIGHUP: sshd re-reads its config and host keys (what `systemctl reload ssh` does on EC2)."""
        self.process.send_signal(signal.SIGHUP)
        wait_listening(self.host, self.port)

    def drop_sessions(self) -> None:
        """Kill every session process (the connections drop; the listener stays): a network blip."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def stall_sessions(self) -> None:
        """SIGSTOP every session process: their connections stay open and say nothing (a stalled SSH server); new
        connections are served. `resume_sessions` lets them go on."""
        self._signal_sessions(signal.SIGSTOP)

    def resume_sessions(self) -> None:
        self._signal_sessions(signal.SIGCONT)

    def _signal_sessions(self, number: int) -> None:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), number)

    def cut_off(self) -> None:
        """The instance stops answering SSH: the listener stops and every open session dies with it."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        self.stop()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise SshdUnavailable(f"sshd did not listen on {host}:{port} within {timeout:.0f}s")


def start(root: Path, host: str = "127.0.0.1", port: int | None = None) -> SshServer:
    """Start sshd for the sandbox `root`. The host key must already be at root/etc/ssh/ssh_host_ed25519_key."""
    if not is_loopback_host(host):
        raise SshdUnavailable(f"refusing to listen on {host}: loopback only")
    binary = sshd_binary()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian's privilege-separation directory
    port = port or free_port(host)
    config = root / "etc" / "ssh" / "sshd_config.ec2jobs"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {host}",
                f"HostKey {root}/etc/ssh/ssh_host_ed25519_key",
                # The relay user's keys (var/lib/<user>, where the job wrapper puts them), then any user's own.
                f"AuthorizedKeysFile {root}/var/lib/%u/.ssh/authorized_keys {root}/home/%u/.ssh/authorized_keys",
                "PidFile none",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "PrintMotd no",
                "LogLevel ERROR",
                # Sessions get the sandbox's home: the host user's own dotfiles (~/.bashrc, which bash reads for
                # every SSH command) are not the instance's, and can be slow or take locks (pyenv rehash).
                f"SetEnv EC2JOBS_ROOT={root} HOME={root}/home/{getpass.getuser()}",
                "",
            ]
        )
    )
    process = subprocess.Popen(  # noqa: S603 - fixed binary and our own config
        [binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(host, port)
    except SshdUnavailable:
        process.kill()
        _, err = process.communicate(timeout=5)
        raise SshdUnavailable(f"sshd failed to start: {err.decode(errors='replace').strip()[:500]}") from None
    return SshServer(host, port, root, config, process)
