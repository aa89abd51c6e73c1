"""SSH to a job's instance (paramiko): the job's pinned host key is the only one trusted (never auto-accepted), the
team's key authenticates. Remote paths honour EC2JOBS_ROOT (set by the local instance simulator's sshd; unset on
EC2), like the job wrapper.

paramiko (and the cryptography, PyNaCl and bcrypt it loads) is imported by the first connect, not with this module:
service/relay.py imports this module, and the functions that wire the relay without connecting (the other workflow
steps, instance events) need none of it."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

STATE_DIR = '"${EC2JOBS_ROOT:-}/var/lib/ec2jobs"'


class InstanceNotReady(Exception):
    """The instance cannot be used yet (booting, sshd not up, the wrapper has not installed the keys yet, or the
    host key is not the job's pinned one). `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(Exception):
    """An established session broke; resume from the committed offset."""


@dataclass(frozen=True)
class Remote:
    host: str
    port: int
    user: str


WATCH_SECONDS = 1.0  # the watcher looks for the job's result this often, and writes a heartbeat each time
WATCH_STOPPING_SECONDS = 0.1  # ... this often once the relay asked the wrapper to stop the job (cancel, interrupt)
_RESULT_OPEN = b"<result>\n"
_RESULT_CLOSE = b"\n</result>\n"


def watched_tail(offset: int, poll_seconds: float) -> str:
    """The stream command: `tail -F` of the output from `offset` on stdout (byte-exact, nothing else is written
    there), and on stderr a watcher: a `.` every WATCH_SECONDS (the instance is alive), then, once the wrapper's
    result file exists, `<result>`, the result, the output's final size, `</result>` (the result is written only
    after the output is complete, so a size read after it is final). Once the relay closes the channel, the
    watcher's next heartbeat fails and it exits, and tail (`--pid`: it follows only while the watcher's shell lives)
    with it: nothing lingers on the instance per connection. Nothing is killed by PID (a PID can be reused)."""
    # tail -s: when tail cannot use inotify it polls the file, by default once a second (GNU coreutils), seen here
    # with several sandboxes at once. A job's lines must not wait for that.
    return (
        f"S={STATE_DIR}; tail -c +{offset + 1} -s {poll_seconds:g} -F --pid=$$ $S/output.log 2>/dev/null & T=$!; "
        "trap '' PIPE; R=; "
        "while kill -0 $T 2>/dev/null; do "
        'if [ -z "$R" ] && [ -e $S/result ]; then R=1; '
        "{ printf '\\n<result>\\n'; cat $S/result; "
        "printf '\\nsize=%s\\n</result>\\n' \"$(stat -c %s $S/output.log 2>/dev/null || echo 0)\"; } >&2 || break; "
        "fi; "
        "printf . >&2 || break; "
        'if [ -z "$R" ] && { [ -e $S/relay/cancel ] || [ -e $S/relay/interrupt ]; }; '
        f"then sleep {WATCH_STOPPING_SECONDS:g}; else sleep {WATCH_SECONDS:g}; fi; "
        "done"
    )


def parse_status(out: bytes) -> tuple[dict[str, str] | None, int]:
    """`key=value` lines of the wrapper's result and a `size=` line: (the result, None without an exit_code; the
    output's size)."""
    values: dict[str, str] = {}
    size = 0
    for line in out.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "size":
            size = int(value) if value.isdigit() else 0
        else:
            values[key] = value
    return (values if "exit_code" in values else None), size


class OutputStream:
    """A job's output as `recv` delivers it (the channel's stdout; TimeoutError when nothing came within the poll),
    and what the watcher beside it said on stderr (`heard`)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._said = bytearray()
        self._result: tuple[dict[str, str] | None, int] | None = None

    def recv(self, size: int) -> bytes:
        data: bytes = self.channel.recv(size)
        return data

    def heard(self) -> tuple[bool, tuple[dict[str, str] | None, int] | None]:
        """(whether the watcher wrote anything since the last call, the job's result and final output size once it
        reported them). Never blocks."""
        spoke = False
        while self.channel.recv_stderr_ready():
            chunk = self.channel.recv_stderr(4096)
            if not chunk:
                break
            spoke = True
            if self._result is None:
                self._said += chunk
        if self._result is None and _RESULT_OPEN in self._said:
            start = self._said.index(_RESULT_OPEN) + len(_RESULT_OPEN)
            end = self._said.find(_RESULT_CLOSE, start)
            if end >= 0:
                self._result = parse_status(bytes(self._said[start:end]))
                self._said.clear()
        elif self._result is None and b"<" not in self._said:
            self._said.clear()  # heartbeats only
        return spoke, self._result

    def close(self) -> None:
        self.channel.close()


class SshSession:
    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client

    def stream(self, offset: int, poll_seconds: float) -> OutputStream:
        """The output file from byte `offset` on, as it is written (tail -F), with a watcher beside it that says
        when the job's result is there (OutputStream): the relay runs no command per look while the job is quiet."""
        import paramiko  # loaded by connect(), which made this session

        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost("the SSH transport is closed")
        try:
            channel = transport.open_session()
            channel.settimeout(poll_seconds)
            channel.exec_command(watched_tail(offset, poll_seconds))
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ConnectionLost(type(error).__name__) from None
        return OutputStream(channel)

    def run(self, command: str, timeout: float = 15.0) -> tuple[int, bytes]:
        import paramiko  # loaded by connect(), which made this session

        try:
            _, stdout, _ = self.client.exec_command(command, timeout=timeout)
            output = stdout.read()
            return stdout.channel.recv_exit_status(), output
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ConnectionLost(type(error).__name__) from None

    def status(self) -> tuple[dict[str, str] | None, int]:
        """The wrapper's result (None until written) and the output file's size. Read in this order: the result is
        written only after the output is complete, so a size read after seeing it is final."""
        _, out = self.run(
            f"S={STATE_DIR}; if [ -e $S/result ]; then cat $S/result; echo; fi; "
            f'printf "size=%s\\n" "$(stat -c %s $S/output.log 2>/dev/null || echo 0)"'
        )
        return parse_status(out)

    def run_with_input(self, command: str, data: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        """Run `command` with `data` on its standard input; (exit status, stdout+stderr)."""
        import paramiko  # loaded by connect(), which made this session

        try:
            stdin, stdout, _ = self.client.exec_command(command, timeout=timeout)
            stdout.channel.set_combine_stderr(True)
            stdin.write(data)
            stdin.flush()
            stdin.channel.shutdown_write()
            output = stdout.read()
            return stdout.channel.recv_exit_status(), output
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise ConnectionLost(type(error).__name__) from None

    def deliver_bundle(self, tar: bytes) -> bool:
        """Unpack the start bundle into relay/bundle (via bundle.new and a directory rename, so the wrapper sees all
        of it or nothing). Idempotent: True once it is there (delivered now or before); False if it could not be."""
        rc, _ = self.run_with_input(
            f"S={STATE_DIR}/relay; umask 077; [ -d $S/bundle ] && exit 0; rm -rf $S/bundle.new && "
            "mkdir $S/bundle.new && tar -x -f - -C $S/bundle.new --no-same-owner --no-same-permissions && "
            "mv -T $S/bundle.new $S/bundle",
            tar,
        )
        return rc == 0

    def write_grants(self, document: bytes) -> bool:
        """Replace relay/grants.json (the instance's short-lived S3 credentials), atomically, readable only by the
        relay user and root."""
        rc, _ = self.run_with_input(
            f"S={STATE_DIR}/relay; umask 077; cat > $S/grants.json.tmp && mv -f $S/grants.json.tmp $S/grants.json",
            document,
        )
        return rc == 0

    def request_cancel(self) -> bool:
        """Tell the wrapper to stop the job (it then records a CANCELLED result and drains as usual)."""
        rc, _ = self.run(f"touch {STATE_DIR}/relay/cancel")
        return rc == 0

    def request_stop(self) -> bool:
        """Tell the wrapper AWS is taking the instance (relay/interrupt): it stops the job as for a cancel (SIGTERM,
        SIGKILL after the grace) but still uploads its outputs and checkpoints for the next attempt, then records an
        INTERRUPTED result (phase `start` if the job had not started) and drains as usual. A cancel wins."""
        rc, _ = self.run(f"touch {STATE_DIR}/relay/interrupt")
        return rc == 0

    def mark_drained(self) -> bool:
        rc, _ = self.run(f"touch {STATE_DIR}/relay/drained")
        return rc == 0

    def close(self) -> None:
        self.client.close()


class SshConnector:
    def __init__(self, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout

    def connect(self, remote: Remote, private_key_openssh: str, host_key_openssh: str) -> SshSession:
        import paramiko

        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())  # only the pinned key, ever
        parts = host_key_openssh.split()
        pinned = paramiko.Ed25519Key(data=base64.b64decode(parts[1]))
        name = remote.host if remote.port == 22 else f"[{remote.host}]:{remote.port}"
        client.get_host_keys().add(name, parts[0], pinned)
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(private_key_openssh))
        try:
            client.connect(
                remote.host,
                port=remote.port,
                username=remote.user,
                pkey=key,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise InstanceNotReady("the instance's SSH host key is not the job's pinned key (yet)") from None
        except paramiko.AuthenticationException:
            client.close()
            raise InstanceNotReady("the instance does not accept the team's key yet") from None
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as error:
            client.close()
            raise InstanceNotReady(f"SSH is not reachable yet ({type(error).__name__})") from None
        return SshSession(client)
