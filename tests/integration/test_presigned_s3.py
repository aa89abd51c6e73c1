"""Presigned S3 URLs on the IAM-enforcing emulator (local/moto_patches.py `_patch_presigned_s3`): moto alone answers
them with a 500 under enforcement; AWS serves them until they expire, then answers 403 AccessDenied."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from botocore.config import Config

from local.moto_patches import presigned_expired
from tests.integration.conftest import ControlPlane


def _s3(control_plane: ControlPlane) -> object:
    import boto3

    return boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback emulator URL
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _with_date(url: str, stamp: str) -> str:
    parts = urlsplit(url)
    query = [(k, stamp if k == "X-Amz-Date" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_a_presigned_get_is_served_until_it_expires(control_plane: ControlPlane) -> None:
    s3 = _s3(control_plane)
    bucket = f"presigned-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")  # type: ignore[attr-defined]
    url = s3.generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": bucket, "Key": "a/b.txt"}, ExpiresIn=300
    )

    assert _get(url) == (200, b"hello")
    status, body = _get(_with_date(url, "20200101T000000Z"))
    assert status == 403
    assert b"AccessDenied" in body
    assert b"Request has expired" in body


@pytest.mark.parametrize(
    ("date", "expires", "now", "expired"),
    [
        ("20261202T100000Z", "60", 1796205600 + 59, False),
        ("20261202T100000Z", "60", 1796205600 + 61, True),
        ("garbage", "60", 0, True),
    ],
)
def test_expiry_arithmetic(date: str, expires: str, now: float, expired: bool) -> None:
    assert presigned_expired({"X-Amz-Date": [date], "X-Amz-Expires": [expires]}, now) is expired
