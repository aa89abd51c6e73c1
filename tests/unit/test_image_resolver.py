"""AMI lookup caching, with fakes: memory first, then the shared cache, then one DescribeImages; a TTL bounds all."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.core import images
from controlplane.core.errors import JobFailed
from controlplane.core.ports import CachedImage
from controlplane.service.images import ImageResolver

DLAMI = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20251105"


class FakeCache:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], CachedImage] = {}

    def get(self, region: str, family: str) -> CachedImage | None:
        return self.items.get((region, family))

    def put(self, region: str, family: str, image: CachedImage) -> None:
        self.items[(region, family)] = image


class FakeEc2:
    def __init__(self, region: str, found: list[dict[str, Any]]) -> None:
        self.region = region
        self.found = found
        self.describes = 0

    def images(self, owners: list[str], filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.describes += 1
        assert owners == [images.AMAZON_DLAMI_OWNER]
        assert {"Name": "architecture", "Values": ["x86_64"]} in filters
        return self.found


def dlami(image_id: str) -> dict[str, Any]:
    return {
        "ImageId": image_id,
        "Name": DLAMI,
        "CreationDate": "2025-11-05T00:00:00Z",
        "OwnerId": images.AMAZON_DLAMI_OWNER,
        "RootDeviceName": "/dev/sda1",
    }


def test_given_a_fresh_lookup_then_it_is_reused_until_the_ttl_expires() -> None:
    now = [1000.0]
    cache = FakeCache()
    ec2 = FakeEc2("us-east-1", [dlami("ami-1")])
    resolver = ImageResolver(cache, ttl_seconds=60, clock=lambda: now[0])

    first = resolver.resolve(ec2, images.ImageFamily.GPU)  # type: ignore[arg-type]
    second = resolver.resolve(ec2, images.ImageFamily.GPU)  # type: ignore[arg-type]
    other_container = ImageResolver(cache, ttl_seconds=60, clock=lambda: now[0])
    third = other_container.resolve(ec2, images.ImageFamily.GPU)  # type: ignore[arg-type]
    assert (first.image_id, second.image_id, third.image_id, ec2.describes) == ("ami-1", "ami-1", "ami-1", 1)

    ec2.found = [dlami("ami-2")]
    now[0] += 61
    assert resolver.resolve(ec2, images.ImageFamily.GPU).image_id == "ami-2"  # type: ignore[arg-type]
    assert ec2.describes == 2
    assert cache.items[("us-east-1", "gpu")].image_id == "ami-2"


def test_given_no_image_then_the_job_fails_saying_what_was_looked_for() -> None:
    resolver = ImageResolver(FakeCache(), ttl_seconds=60)
    with pytest.raises(JobFailed) as failure:
        resolver.resolve(FakeEc2("eu-north-1", []), images.ImageFamily.GPU)  # type: ignore[arg-type]
    assert failure.value.reason == "LAUNCH_ERROR"
    assert "eu-north-1" in failure.value.message
    assert images.AMAZON_DLAMI_OWNER in failure.value.message
