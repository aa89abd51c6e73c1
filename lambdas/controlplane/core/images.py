"""Which machine image a job boots (pure): the image family for an instance type and how to find its newest AMI.

GPU types boot the NVIDIA Deep Learning Base AMI (Ubuntu; driver, CUDA and the aws CLI preinstalled); CPU types
boot Canonical's Ubuntu LTS. Both are looked up by owner + name pattern, `state=available`, x86_64, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

AMAZON_DLAMI_OWNER = "898082745236"
CANONICAL_OWNER = "099720109477"


class ImageFamily(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class ImageQuery:
    family: ImageFamily
    owners: tuple[str, ...]
    name_patterns: tuple[str, ...]  # in order of preference (the first that matches anything wins)
    description: str

    def filters(self) -> list[dict[str, Any]]:
        return [
            {"Name": "name", "Values": list(self.name_patterns)},
            {"Name": "state", "Values": ["available"]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "image-type", "Values": ["machine"]},
        ]


QUERIES: dict[ImageFamily, ImageQuery] = {
    ImageFamily.GPU: ImageQuery(
        family=ImageFamily.GPU,
        owners=(AMAZON_DLAMI_OWNER,),
        name_patterns=(
            "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *",
            "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
        ),
        description="NVIDIA Deep Learning Base AMI (Ubuntu)",
    ),
    ImageFamily.CPU: ImageQuery(
        family=ImageFamily.CPU,
        owners=(CANONICAL_OWNER,),
        name_patterns=(
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*",
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
        ),
        description="Canonical Ubuntu LTS",
    ),
}


def family_for(gpu_count: int) -> ImageFamily:
    return ImageFamily.GPU if gpu_count > 0 else ImageFamily.CPU


def _matches(name: str, pattern: str) -> bool:
    prefix = pattern.removesuffix("*")
    return name.startswith(prefix) if pattern.endswith("*") else name == pattern


def choose(query: ImageQuery, images: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest available x86_64 image of the most preferred name pattern that has any (DescribeImages shapes)."""
    usable = [
        image
        for image in images
        if image.get("State", "available") == "available"
        and image.get("Architecture", "x86_64") == "x86_64"
        and str(image.get("OwnerId", "")) in query.owners
    ]
    for pattern in query.name_patterns:
        candidates = [image for image in usable if _matches(str(image.get("Name", "")), pattern)]
        if candidates:
            return max(candidates, key=lambda image: (str(image.get("CreationDate", "")), str(image["ImageId"])))
    return None
