"""The guard that keeps tests and the local runtime off real AWS."""

from __future__ import annotations

import socket

import boto3
import pytest

from local import guard


def test_given_a_public_address_when_connecting_then_the_guard_refuses() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(guard.RealAwsRefused):
        sock.connect(("52.94.236.248", 443))  # an AWS address; must never be attempted


def test_given_a_loopback_address_when_connecting_then_the_guard_allows_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


def test_given_the_isolated_environment_when_boto3_builds_a_client_then_it_points_at_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the environment every local process gets
    for name, value in guard.isolated_aws_environment("http://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    # When a client is built with no explicit endpoint
    client = boto3.session.Session().client("sts")
    # Then its endpoint is the loopback address, never amazonaws.com
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_given_an_explicit_real_endpoint_when_calling_then_the_connection_is_refused() -> None:
    client = boto3.client("sts", endpoint_url="https://sts.amazonaws.com")
    with pytest.raises(guard.RealAwsRefused, match="only loopback"):
        client.get_caller_identity()


def test_given_a_public_hostname_when_resolving_then_the_guard_refuses_before_any_dns_traffic() -> None:
    with pytest.raises(guard.RealAwsRefused, match="name lookup"):
        socket.getaddrinfo("sts.amazonaws.com", 443)
    assert socket.getaddrinfo("localhost", 80)


@pytest.mark.parametrize(
    "env",
    [
        {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"},
        {"AWS_ACCESS_KEY_ID": "ASIAIOSFODNN7EXAMPLE"},
        {"AWS_PROFILE": "prod"},
        {"AWS_SESSION_TOKEN": "token"},
        {"AWS_ENDPOINT_URL": "https://dynamodb.us-east-1.amazonaws.com"},
    ],
)
def test_given_real_looking_credentials_or_endpoints_when_checking_then_it_fails_loudly(env: dict[str, str]) -> None:
    with pytest.raises(guard.RealAwsRefused):
        guard.check_environment(env)


def test_given_fake_credentials_and_a_loopback_endpoint_when_checking_then_it_passes() -> None:
    guard.check_environment(
        {"AWS_ACCESS_KEY_ID": guard.FAKE_ACCESS_KEY_ID, "AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}
    )


def test_the_isolated_environment_has_no_shared_config_and_no_metadata() -> None:
    env = guard.isolated_aws_environment("http://127.0.0.1:1234")
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == env["AWS_CONFIG_FILE"]
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    with pytest.raises(guard.RealAwsRefused):
        guard.isolated_aws_environment("https://example.com")
