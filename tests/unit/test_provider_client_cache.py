"""Provider clients kept per warm container (adapters/aws.py ProviderClientCache): one per service, region and key."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.adapters import aws
from controlplane.core.ports import ProviderCredentials

KEY = ProviderCredentials("AKIAEXAMPLE0000001", "secret-one")


class Made:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, service: str, credentials: ProviderCredentials, region: str) -> Any:
        self.calls.append((service, credentials.access_key_id, region))
        return object()


@pytest.fixture(autouse=True)
def _config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws.config, "get", lambda: type("Settings", (), {"provider_endpoint_url": None})())


def test_the_same_service_region_and_key_get_the_same_client() -> None:
    made = Made()
    cache = aws.ProviderClientCache(made)
    assert cache("ec2", KEY, "us-east-1") is cache("ec2", KEY, "us-east-1")
    assert made.calls == [("ec2", KEY.access_key_id, "us-east-1")]


def test_another_service_region_key_or_secret_gets_its_own_client() -> None:
    made = Made()
    cache = aws.ProviderClientCache(made)
    first = cache("ec2", KEY, "us-east-1")
    others = [
        cache("iam", KEY, "us-east-1"),
        cache("ec2", KEY, "us-west-2"),
        cache("ec2", ProviderCredentials("AKIAEXAMPLE0000002", "secret-one"), "us-east-1"),
        cache("ec2", ProviderCredentials(KEY.access_key_id, "secret-two"), "us-east-1"),  # a new secret: new client
    ]
    assert len({id(c) for c in [first, *others]}) == 5
    assert len(made.calls) == 5


def test_it_is_bounded_and_forgets_the_least_recently_used_first() -> None:
    made = Made()
    cache = aws.ProviderClientCache(made, size=2)
    a = cache("ec2", KEY, "us-east-1")
    cache("ec2", KEY, "us-east-2")
    assert cache("ec2", KEY, "us-east-1") is a  # used again: now the most recent
    cache("ec2", KEY, "us-west-1")  # evicts us-east-2
    assert cache("ec2", KEY, "us-east-1") is a
    cache("ec2", KEY, "us-east-2")
    assert [region for _, _, region in made.calls] == ["us-east-1", "us-east-2", "us-west-1", "us-east-2"]


def test_without_a_factory_it_looks_up_provider_client_per_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    made = Made()
    cache = aws.ProviderClientCache()
    monkeypatch.setattr(aws, "provider_client", made)
    cache("ec2", KEY, "us-east-1")
    assert made.calls == [("ec2", KEY.access_key_id, "us-east-1")]
