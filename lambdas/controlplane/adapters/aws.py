"""boto3 clients: one retry/timeout policy, cached per process. Endpoints come from the standard
AWS_ENDPOINT_URL variables (the emulator locally); calls made with a provider's keys may use their own endpoint."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, Final

import boto3
import botocore.session
from botocore.config import Config

from controlplane import config
from controlplane.core.ports import ProviderCredentials

# Connections a client keeps per endpoint. botocore's default (10) is too few for a relay shard: its job loops (up
# to SHARD_CAPACITY, 50, service/relay_fleet.py) share its clients, and each loop may have two DynamoDB calls in
# flight (its own and its log writer's) besides the shard's tick; beyond the pool, urllib3 opens a connection, warns
# "Connection pool is full, discarding connection" and closes it after the call. 128 = 2 x 50 + a margin; idle slots
# cost nothing (a connection is opened only when a call needs one).
MAX_POOL_CONNECTIONS: Final = 128
# "standard" retry mode: exponential backoff with jitter on throttling and transient errors, quota-limited.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
    max_pool_connections=MAX_POOL_CONNECTIONS,
)


_OWN_LOCK = threading.Lock()
_own_session: boto3.session.Session | None = None


class _PerService:
    """Clients (or resources) for the control plane's own account (its role's credentials), one per service and
    process, all made from one boto3 Session: its loader reads the endpoint data and each service model once (a
    Session per client read them again for each: 25-45 ms of a cold start per client). boto3 Sessions are
    not thread-safe, so they are made under a lock; the clients themselves are. cache_clear() forgets them and
    the Session, whose credentials and settings come from the environment (tests and the local runtime call it
    when they change it)."""

    def __init__(self, make: Callable[[boto3.session.Session, str], Any]) -> None:
        self._make = make
        self._made: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        global _own_session
        with _OWN_LOCK:
            if service not in self._made:
                if _own_session is None:
                    _own_session = boto3.session.Session()
                self._made[service] = self._make(_own_session, service)
            return self._made[service]

    def cache_clear(self) -> None:
        global _own_session
        with _OWN_LOCK:
            self._made.clear()
            _own_session = None


def _own_client(session: boto3.session.Session, service: str) -> Any:
    return session.client(service, region_name=config.get().region, config=CLIENT_CONFIG)


def _own_resource(session: boto3.session.Session, service: str) -> Any:
    return session.resource(service, region_name=config.get().region, config=CLIENT_CONFIG)


client = _PerService(_own_client)  # client("sts"), resource("dynamodb"): the control plane's own account
resource = _PerService(_own_resource)


class Lazy:
    """A client made at its first use (the first attribute looked up on it, e.g. a call), then kept. The wiring
    (handlers/container.py) gives services a Lazy for the clients their first call may not need: making a client
    reads its service model and builds its class (S3's about 40 ms), which a cold start then does not pay
    (docs/cold-start.md). Thread-safe: a relay shard's job loops may use it first at the same moment, and all get
    the one client."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._made: Any = None

    @property
    def made(self) -> bool:
        """Whether the client exists yet."""
        return self._made is not None

    def resolve(self) -> Any:
        """The client, made now if it is not yet."""
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
                made = self._made
        return made

    def __getattr__(self, name: str) -> Any:
        if name in {"_make", "_lock", "_made"}:  # not set yet (copy, pickle): no client to make
            raise AttributeError(name)
        return getattr(self.resolve(), name)


def lazy_client(service: str) -> Lazy:
    """client(service), made at its first use (Lazy)."""
    return Lazy(lambda: client(service))


_PROVIDER_SESSION_LOCK = threading.Lock()


@cache
def _provider_session() -> botocore.session.Session:
    """One botocore session for every provider client: its loader reads each service model once per process (a new
    boto3 Session per client reloads EC2's model: about half a second each). Credentials are given per client,
    never set on the session."""
    return botocore.session.get_session()


def provider_client(service: str, credentials: ProviderCredentials, region: str) -> Any:
    """A client acting as a provider's IAM user (bounded by the seed policy); its keys are its own."""
    with _PROVIDER_SESSION_LOCK:  # botocore sessions are not thread-safe; the clients they make are
        return _provider_session().create_client(
            service,
            region_name=region,
            endpoint_url=config.get().provider_endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=CLIENT_CONFIG,
        )


class ProviderClientCache:
    """Provider clients kept for the life of a warm container, one per (service, region, key): building one costs
    5-20 ms (EC2's client class has hundreds of methods), which a Bootstrap or Launch step paid on every call, and
    a kept client also keeps its HTTP connections. The keys stay in memory only, inside the clients as before; the
    cache key holds the access key id and a digest of the secret, so a provider's new key is a new client. `make`
    is looked up per miss (tests replace aws.provider_client). Bounded: the least recently used client goes first.
    Thread-safe (the local runtime runs steps in threads)."""

    def __init__(self, make: Callable[[str, ProviderCredentials, str], Any] | None = None, size: int = 32) -> None:
        self._make = make
        self._size = size
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, str, str, str | None], Any] = {}

    def __call__(self, service: str, credentials: ProviderCredentials, region: str) -> Any:
        digest = hashlib.sha256(credentials.secret_access_key.encode()).hexdigest()
        key = (service, region, credentials.access_key_id, digest, config.get().provider_endpoint_url)
        with self._lock:
            found = self._clients.pop(key, None)
            if found is not None:
                self._clients[key] = found  # most recently used last
                return found
        made = (self._make or provider_client)(service, credentials, region)
        with self._lock:
            self._clients[key] = made
            while len(self._clients) > self._size:
                self._clients.pop(next(iter(self._clients)))
        return made
