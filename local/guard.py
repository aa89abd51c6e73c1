"""Make reaching real AWS impossible from tests and the local runtime.

- `check_environment()` refuses to start when the inherited environment carries real-looking AWS credentials or a
  profile (fail loudly, before anything could use them);
- `isolated_aws_environment()` is the environment every local process gets: fake keys, no shared config files, no
  instance metadata, and AWS_ENDPOINT_URL on loopback;
- `install_network_guard()` patches socket connects so that anything but 127.0.0.0/8, ::1 and Unix sockets raises.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

FAKE_ACCESS_KEY_ID = "AKIAFAKEEC2JOBSLOCAL"
FAKE_SECRET_ACCESS_KEY = "ec2jobs-local-fake-secret-key-not-real-000"  # noqa: S105 - deliberately fake
_REAL_KEY_ID = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$")
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


class RealAwsRefused(RuntimeError):
    """Raised when something could reach a real AWS endpoint or use real credentials."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def assert_loopback_url(url: str) -> str:
    host = urlparse(url).hostname or ""
    if not is_loopback_host(host):
        raise RealAwsRefused(f"refusing to use endpoint {url!r}: only loopback endpoints are allowed here")
    return url


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    key_id = env.get("AWS_ACCESS_KEY_ID", "")
    if _REAL_KEY_ID.match(key_id) and key_id != FAKE_ACCESS_KEY_ID:
        raise RealAwsRefused(
            "refusing to run: AWS_ACCESS_KEY_ID in the environment looks like a real AWS key. ec2jobs tests and the "
            "local runtime never use real credentials: unset AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY first."
        )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        if env.get(name):
            raise RealAwsRefused(f"refusing to run: {name} is set; unset it (nothing here may use real AWS)")
    endpoint = env.get("AWS_ENDPOINT_URL")
    if endpoint:
        assert_loopback_url(endpoint)


def isolated_aws_environment(endpoint_url: str, region: str = "us-east-1") -> dict[str, str]:
    """Environment variables that pin every AWS SDK call to the emulator with fake credentials."""
    assert_loopback_url(endpoint_url)
    return {
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def apply_isolated_environment(endpoint_url: str, region: str = "us-east-1") -> None:
    for name in _CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(isolated_aws_environment(endpoint_url, region))


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else str(address)
    return is_loopback_host(str(host))


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _allowed(self, address):
        raise RealAwsRefused(f"network guard: connection to {address!r} refused; only 127.0.0.0/8 is allowed")
    _original_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _allowed(self, address):
        raise RealAwsRefused(f"network guard: connection to {address!r} refused; only 127.0.0.0/8 is allowed")
    return _original_connect_ex(self, address)


_original_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and not is_loopback_host(str(name)):
        raise RealAwsRefused(f"network guard: name lookup of {name!r} refused; only loopback hosts are allowed")
    return _original_getaddrinfo(host, *args, **kwargs)


def _guard_botocore() -> None:
    """Refuse before botocore sends, so the error is ours (not a generic 'could not connect' after retries)."""
    try:
        from botocore.endpoint import Endpoint
    except ImportError:  # pragma: no cover - botocore is always installed here
        return
    original_send = Endpoint._send
    if getattr(original_send, "_ec2jobs_guard", False):
        return

    def guarded_send(self: Any, request: Any) -> Any:
        assert_loopback_url(request.url)
        return original_send(self, request)

    guarded_send._ec2jobs_guard = True  # type: ignore[attr-defined]
    Endpoint._send = guarded_send  # type: ignore[method-assign]


def install_network_guard() -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = _guarded_getaddrinfo
    _guard_botocore()
