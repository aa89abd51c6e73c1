"""The local API front serves requests in threads, but a Lambda execution environment runs one invocation at a time,
and the api handler keeps per-invocation state on its module-level resolver (Powertools keeps the current route on
the app): concurrent requests through the front once saw each other's state (KeyError '_route' → 500 under the
fault matrix's concurrent polling). The front calls each handler one invocation at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local.apigw import LocalApiGateway
from tests.integration.conftest import ControlPlane, Tenant


class OneAtATime:
    """A handler that records how many invocations ever overlapped."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.01)  # long enough for another thread to come in
        with self.lock:
            self.inside -= 1
        return self.answer


def test_the_front_never_runs_two_invocations_of_a_handler_at_once() -> None:
    api = OneAtATime({"statusCode": 200, "headers": {}, "body": "{}"})
    policy = {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}
    authorizer = OneAtATime({"principalId": "t", "policyDocument": {"Statement": [policy]}, "context": {}})
    gateway = LocalApiGateway(api, authorizer, frozenset())

    def call(_: int) -> int:
        return gateway.request("GET", "/jobs", headers={"Authorization": "Bearer x"}).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(call, range(40))) == {200}
    assert (api.most, authorizer.most) == (1, 1)


def test_concurrent_requests_through_the_real_handlers_all_succeed(control_plane: ControlPlane, tenant: Tenant) -> None:
    requests = [("/jobs", {"limit": "5"}), ("/providers", {}), ("/catalog", {"gpu": "A10G"}), ("/tokens", {})]

    def call(i: int) -> tuple[str, int]:
        path, query = requests[i % len(requests)]
        return path, control_plane.call("GET", path, tenant.token, query=query).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(80)))
    assert [answer for answer in answers if answer[1] != 200] == []
