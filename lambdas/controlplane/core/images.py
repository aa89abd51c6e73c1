"""Which machine image a job boots (pure): the image family for an instance type and how to find its newest AMI.

GPU types boot the NVIDIA Deep Learning Base AMI (Ubuntu; driver, CUDA and the aws CLI preinstalled) — the OSS
(open kernel module) driver variant, which supports Turing and newer GPUs, and the proprietary-driver variant for
Volta (V100: p3dn), which the open modules do not support. CPU types boot Canonical's Ubuntu LTS. All are looked up
by owner + name pattern, `state=available`, x86_64, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controlplane.core.catalog import InstanceType

AMAZON_DLAMI_OWNER = "898082745236"
CANONICAL_OWNER = "099720109477"


class ImageFamily(StrEnum):
    GPU = "gpu"
    GPU_PROPRIETARY_DRIVER = "gpu-proprietary"
    CPU = "cpu"


# GPUs older than Turing: NVIDIA's open kernel modules do not drive them.
PRE_TURING_GPUS = frozenset({"V100", "K80", "M60"})


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
    ImageFamily.GPU_PROPRIETARY_DRIVER: ImageQuery(
        family=ImageFamily.GPU_PROPRIETARY_DRIVER,
        owners=(AMAZON_DLAMI_OWNER,),
        name_patterns=(
            "Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 22.04) *",
            "Deep Learning Base Proprietary Nvidia Driver GPU AMI (Ubuntu 20.04) *",
        ),
        description="NVIDIA Deep Learning Base AMI with the proprietary driver (Ubuntu)",
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


def family_for(gpu_count: int, gpu: str | None = None) -> ImageFamily:
    if gpu_count <= 0:
        return ImageFamily.CPU
    return ImageFamily.GPU_PROPRIETARY_DRIVER if gpu in PRE_TURING_GPUS else ImageFamily.GPU


def family_for_instance(instance: InstanceType) -> ImageFamily:
    return family_for(instance.gpu_count, instance.gpu)


def root_volume_gib(image: dict[str, Any]) -> int:
    """The size of the image's root snapshot: the smallest root volume it can boot with (0 if unknown)."""
    root = image.get("RootDeviceName")
    for mapping in image.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == root and "Ebs" in mapping:
            return int(mapping["Ebs"].get("VolumeSize") or 0)
    return 0


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
