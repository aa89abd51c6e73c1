"""The AWS instance catalog (data file built by scripts/refresh_catalog.py) and instance selection.

Selection = the cheapest instance type that has the requested GPU model and count, satisfies cpus and memory,
and is offered in the region. Asking for something AWS does not sell is an InvalidSpec that says what is sold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.core.errors import InvalidSpec

if TYPE_CHECKING:
    from controlplane.core.spec import Accelerator, Amount, Resources

DATA_FILE = Path(__file__).parent / "data" / "catalog.json"


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    vcpus: int
    memory_gib: float
    gpu: str | None
    gpu_count: int
    gpu_memory_gib: float | None
    spot: bool
    price_per_hour: float | None
    regions: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.name,
            "vcpus": self.vcpus,
            "memory_gib": self.memory_gib,
            "gpu": self.gpu,
            "gpu_count": self.gpu_count,
            "gpu_memory_gib": self.gpu_memory_gib,
            "price_per_hour": self.price_per_hour,
            "regions": list(self.regions),
        }


@dataclass(frozen=True)
class Selection:
    instance: InstanceType
    region: str
    notes: tuple[str, ...]

    @property
    def instance_type(self) -> str:
        return self.instance.name

    @property
    def hourly_price(self) -> float | None:
        return self.instance.price_per_hour


# Accelerators AWS sells that ec2jobs does not run yet (SkyPilot's names for them, normalised) → where AWS sells
# them. Inferentia: https://docs.aws.amazon.com/dlami/latest/devguide/inferentia ; Trainium:
# https://docs.aws.amazon.com/dlami/latest/devguide/trainium (docs/task-spec-compat.md).
_SOLD_ON_AWS_NOT_SUPPORTED: dict[str, str] = {
    "INFERENTIA": "AWS Inferentia, in inf1 and inf2 instances",
    "INFERENTIA1": "AWS Inferentia, in inf1 instances",
    "INFERENTIA2": "AWS Inferentia2, in inf2 instances",
    "TRAINIUM": "AWS Trainium, in trn1 and trn2 instances",
    "TRAINIUM1": "AWS Trainium, in trn1 instances",
    "TRAINIUM2": "AWS Trainium2, in trn2 instances",
}


def _normalise(name: str) -> str:
    return name.strip().upper().replace("_", "-").replace(" ", "")


def _join(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


class Catalog:
    def __init__(self, data: dict[str, Any]) -> None:
        self.price_info: dict[str, Any] = data["prices"]
        self.regions: tuple[str, ...] = tuple(data["regions"])
        self.gpus: tuple[str, ...] = tuple(data["gpus"])
        self.instances: dict[str, InstanceType] = {
            name: InstanceType(
                name=name,
                family=entry["family"],
                vcpus=entry["vcpus"],
                memory_gib=entry["memory_gib"],
                gpu=entry["gpu"],
                gpu_count=entry["gpu_count"],
                gpu_memory_gib=entry["gpu_memory_gib"],
                spot=entry["spot"],
                price_per_hour=entry["price_per_hour"],
                regions=tuple(entry["regions"]),
            )
            for name, entry in data["instance_types"].items()
        }
        self._gpu_lookup = {_normalise(g): g for g in self.gpus}
        self._gpu_lookup.update({_normalise(alias): target for alias, target in data["gpu_aliases"].items()})

    # -- validation helpers used by the task spec -------------------------------------------------------------

    def canonical_gpu(self, name: str) -> str:
        normalised = _normalise(name)
        found = self._gpu_lookup.get(normalised)
        if found is None:
            known = f"GPU types: {_join(self.gpu_descriptions())}"
            sold_as = _SOLD_ON_AWS_NOT_SUPPORTED.get(normalised)
            if sold_as is not None:
                raise ValueError(
                    f"{name!r} is sold on AWS ({sold_as}) but ec2jobs does not support it yet: it runs the NVIDIA "
                    f"GPU types in its catalog. {known}"
                )
            if normalised.startswith("TPU"):
                raise ValueError(f"{name!r} is a Google Cloud TPU, which AWS does not sell. {known}")
            raise ValueError(f"GPU type {name!r} is not one ec2jobs runs (AWS may not sell it). {known}")
        return found

    def gpu_descriptions(self) -> list[str]:
        described = []
        for gpu in self.gpus:
            types = [t for t in self.instances.values() if t.gpu == gpu]
            families = sorted({t.family for t in types})
            described.append(f"{gpu} ({'/'.join(families)}; counts {_join(self.valid_counts(gpu))})")
        return described

    def valid_counts(self, gpu: str) -> list[int]:
        return sorted({t.gpu_count for t in self.instances.values() if t.gpu == gpu})

    def check_region(self, region: str) -> str:
        if region not in self.regions:
            raise ValueError(f"region {region!r} is not an AWS region we know. Regions: {_join(list(self.regions))}")
        return region

    def check_instance_type(self, name: str) -> str:
        if name not in self.instances:
            families = sorted({t.family for t in self.instances.values()})
            raise ValueError(
                f"instance_type {name!r} is not in the catalog. Supported families: {_join(families)} "
                "(GET /catalog lists every size)"
            )
        return name

    # -- selection ---------------------------------------------------------------------------------------------

    def select(self, resources: Resources, region: str) -> Selection:
        """The cheapest instance type satisfying `resources` in `region`, or an InvalidSpec saying why not."""
        from controlplane.core.spec import DEFAULT_CPU_ONLY_CPUS, parse_cpus

        self._require_region(region)
        accelerator = resources.accelerator
        cpus = resources.cpu_requirement
        memory = resources.memory_requirement
        notes: list[str] = []
        if accelerator and _normalise(accelerator.requested_as) != _normalise(accelerator.name):
            notes.append(f"{accelerator.requested_as} is sold on AWS as {accelerator.name}")

        if resources.instance_type:
            pinned = self.instances[resources.instance_type]
            if accelerator and (pinned.gpu != accelerator.name or pinned.gpu_count != accelerator.count):
                has = f"{pinned.gpu}:{pinned.gpu_count}" if pinned.gpu else "no GPU"
                raise InvalidSpec(
                    f"instance_type {pinned.name} has {has}, not {accelerator}: drop one of the two fields"
                )
            candidates = [pinned]
            what = pinned.name
        elif accelerator:
            candidates = self._gpu_candidates(accelerator)
            what = f"{accelerator.name}:{accelerator.count}"
        else:
            candidates = [t for t in self.instances.values() if t.gpu is None]
            what = "CPU-only"
            if cpus is None and memory is None:
                cpus = parse_cpus(DEFAULT_CPU_ONLY_CPUS)

        candidates = self._filter_amount(candidates, cpus, what, "vCPUs", lambda t: t.vcpus)
        candidates = self._filter_amount(candidates, memory, what, "GiB of memory", lambda t: t.memory_gib)
        in_region = [t for t in candidates if region in t.regions]
        if not in_region:
            offered = sorted({r for t in candidates for r in t.regions})
            names = _join([t.name for t in candidates])
            raise InvalidSpec(
                f"{what} ({names}) is not offered in {region}. Regions that offer it: {_join(offered)}",
                details=[{"field": "resources.region", "regions": offered}],
            )
        best = min(
            in_region,
            key=lambda t: (t.price_per_hour is None, t.price_per_hour or 0.0, t.vcpus, t.memory_gib, t.name),
        )
        if best.price_per_hour is None:
            notes.append(f"no on-demand list price is recorded for {best.name}; cost estimates are unavailable")
        return Selection(instance=best, region=region, notes=tuple(notes))

    def select_for(self, resources: Resources, default_region: str) -> Selection:
        """The selection in the job's first region (`resources.region`, else `default_region`); with a list of
        regions, the type chosen there must be offered in every other one (a later attempt may launch there)."""
        regions = resources.regions or (default_region,)
        selection = self.select(resources, regions[0])
        missing = [region for region in regions[1:] if region not in selection.instance.regions]
        if missing:
            raise InvalidSpec(
                f"{selection.instance_type} (the cheapest fit in {regions[0]}) is not offered in {_join(missing)}; "
                "remove those regions from resources.region, or pin an instance_type offered in all of them",
                details=[{"field": "resources.region", "regions": list(selection.instance.regions)}],
            )
        return selection

    def _require_region(self, region: str) -> None:
        try:
            self.check_region(region)
        except ValueError as error:
            raise InvalidSpec(str(error)) from None

    def _gpu_candidates(self, accelerator: Accelerator) -> list[InstanceType]:
        of_model = [t for t in self.instances.values() if t.gpu == accelerator.name]
        matching = [t for t in of_model if t.gpu_count == accelerator.count]
        if not matching:
            counts = self.valid_counts(accelerator.name)
            by_count = "; ".join(
                f"{count}: {_join([t.name for t in of_model if t.gpu_count == count])}" for count in counts
            )
            raise InvalidSpec(
                f"AWS has no instance with {accelerator.count} × {accelerator.name}. "
                f"Valid counts for {accelerator.name}: {_join(counts)} ({by_count})",
                details=[{"field": "resources.accelerators", "valid_counts": counts}],
            )
        return matching

    @staticmethod
    def _filter_amount(
        candidates: list[InstanceType], amount: Amount | None, what: str, unit: str, value: Any
    ) -> list[InstanceType]:
        if amount is None:
            return candidates
        kept = [t for t in candidates if amount.satisfied_by(value(t))]
        if not kept:
            offered = sorted({value(t) for t in candidates})
            wanted = f"{'at least ' if amount.at_least else 'exactly '}{amount.value:g} {unit}"
            raise InvalidSpec(
                f"no {what} instance has {wanted}; {what} instances have {_join([f'{v:g}' for v in offered])} {unit}"
            )
        return kept

    # -- the public catalog view -------------------------------------------------------------------------------

    def describe(self, region: str | None = None, gpu: str | None = None) -> dict[str, Any]:
        types = [t for t in self.instances.values() if (region is None or region in t.regions)]
        if gpu is not None:
            types = [t for t in types if t.gpu == gpu]
        gpus = []
        for name in self.gpus:
            of_gpu = [t for t in types if t.gpu == name]
            if of_gpu:
                gpus.append(
                    {
                        "gpu": name,
                        "gpu_memory_gib": of_gpu[0].gpu_memory_gib,
                        "counts": sorted({t.gpu_count for t in of_gpu}),
                        "instance_types": [t.name for t in of_gpu],
                    }
                )
        return {
            "prices": self.price_info,
            "regions": list(self.regions),
            "gpus": gpus,
            "instance_types": [t.as_dict() for t in types],
        }


@lru_cache(maxsize=1)
def get() -> Catalog:
    """The catalog, loaded once per process (lazily: importing this module reads nothing)."""
    return Catalog(json.loads(DATA_FILE.read_text()))
