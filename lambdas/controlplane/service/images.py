"""AMI lookup: DescribeImages for the newest image of a family, cached per region with a TTL (memory, then the
state table), so a launch rarely pays for the describe."""

from __future__ import annotations

import time
from collections.abc import Callable

from controlplane.adapters.ec2 import Ec2Account
from controlplane.core import images
from controlplane.core.errors import JobFailed
from controlplane.core.lifecycle import FailureReason
from controlplane.core.ports import CachedImage, ImageCache


class ImageResolver:
    def __init__(self, cache: ImageCache, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._memory: dict[tuple[str, str], CachedImage] = {}

    def resolve(self, ec2: Ec2Account, family: images.ImageFamily) -> CachedImage:
        key = (ec2.region, str(family))
        now = self.clock()
        remembered = self._memory.get(key)
        if remembered is not None and remembered.expires_at > now:
            return remembered
        cached = self.cache.get(ec2.region, str(family))
        if cached is not None and cached.expires_at > now:
            self._memory[key] = cached
            return cached
        query = images.QUERIES[family]
        chosen = images.choose(query, ec2.images(list(query.owners), query.filters()))
        if chosen is None:
            raise JobFailed(
                FailureReason.LAUNCH_ERROR,
                f"No available x86_64 {query.description} image was found in {ec2.region} (owners "
                f"{', '.join(query.owners)}, names {' or '.join(query.name_patterns)}).",
            )
        image = CachedImage(
            image_id=str(chosen["ImageId"]),
            name=str(chosen.get("Name", "")),
            root_device_name=str(chosen.get("RootDeviceName") or "/dev/sda1"),
            expires_at=now + self.ttl_seconds,
            min_disk_gib=images.root_volume_gib(chosen),
        )
        self.cache.put(ec2.region, str(family), image)
        self._memory[key] = image
        return image
