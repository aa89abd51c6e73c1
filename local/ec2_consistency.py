"""EC2's eventual consistency, which moto does not have: an EC2 client whose DescribeInstances does not yet show
chosen instances, as AWS documents for the moments after RunInstances
(https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html): filtered describes omit them and a
describe by id answers InvalidInstanceID.NotFound. Tests wrap the provider clients with it (opt-in per test) to
prove that the reconciler and the relay never take "not yet visible" for "gone".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError


class LaggingDescribe:
    """An EC2 client proxy: `hidden` instance ids are invisible to DescribeInstances listings; `hidden_by_id` ones
    also answer InvalidInstanceID.NotFound when asked for by id. Everything else passes through."""

    def __init__(self, client: Any, hidden: set[str], hidden_by_id: set[str] | None = None) -> None:
        self._client = client
        self.hidden = hidden
        self.hidden_by_id = hidden_by_id if hidden_by_id is not None else hidden

    def describe_instances(self, **request: Any) -> dict[str, Any]:
        wanted = set(request.get("InstanceIds", []))
        if wanted & self.hidden_by_id:
            missing = sorted(wanted & self.hidden_by_id)
            error = {"Code": "InvalidInstanceID.NotFound", "Message": f"The instance IDs '{missing}' do not exist"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "DescribeInstances")
        response = self._client.describe_instances(**request)
        return self._without_hidden(response, by_id=bool(wanted))

    def get_paginator(self, operation: str) -> Any:
        if operation != "describe_instances":
            return self._client.get_paginator(operation)
        return _Paginator(self)

    def _without_hidden(self, response: dict[str, Any], by_id: bool) -> dict[str, Any]:
        hide = self.hidden_by_id if by_id else self.hidden
        reservations = []
        for reservation in response.get("Reservations", []):
            instances = [i for i in reservation.get("Instances", []) if i["InstanceId"] not in hide]
            if instances:
                reservations.append(reservation | {"Instances": instances})
        return response | {"Reservations": reservations}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _Paginator:
    def __init__(self, lagging: LaggingDescribe) -> None:
        self._lagging = lagging

    def paginate(self, **request: Any) -> Any:
        request.pop("PaginationConfig", None)
        token: str | None = None
        while True:
            page = self._lagging.describe_instances(**request | ({"NextToken": token} if token else {}))
            yield page
            token = page.get("NextToken")
            if not token:
                return


def lagging_clients(
    clients: Callable[[str, Any, str], Any], hidden: set[str], hidden_by_id: set[str] | None = None
) -> Callable[[str, Any, str], Any]:
    """Wrap a ProviderClients factory: its EC2 clients lag for the given instances."""

    def make(service: str, credentials: Any, region: str) -> Any:
        client = clients(service, credentials, region)
        return LaggingDescribe(client, hidden, hidden_by_id) if service == "ec2" else client

    return make
