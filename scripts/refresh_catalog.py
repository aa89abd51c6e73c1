#!/usr/bin/env python3
"""Rebuild the instance catalog shipped with the Lambda asset.

Specs (vCPU, memory, GPU model/count/memory) and region offerings come from AWS's own DescribeInstanceTypes /
DescribeInstanceTypeOfferings data as bundled in the pinned moto release; prices come from
`catalog/prices-us-east-1.csv`. Nothing here calls AWS.

    scripts/refresh_catalog.py                      # rebuild lambdas/controlplane/core/data/catalog.json
    scripts/refresh_catalog.py --check              # exit 1 if the committed catalog is stale
    scripts/refresh_catalog.py --offer-file F.csv   # first refresh prices from AWS's public EC2 price list CSV
                                                    # (https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/
                                                    #  AmazonEC2/current/us-east-1/index.csv, downloaded by you)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRICES = ROOT / "catalog" / "prices-us-east-1.csv"
OUTPUT = ROOT / "lambdas" / "controlplane" / "core" / "data" / "catalog.json"

GPU_FAMILIES = ["g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"]
CPU_FAMILIES = ["m7i", "c7i", "r7i", "m7a", "c7a", "r7a"]

# Names people type (the seed page, SkyPilot, NVIDIA marketing) → the catalog's canonical GPU name.
GPU_ALIASES = {
    "A10": "A10G",
    "A100-40GB": "A100",
    "A100-40G": "A100",
    "A100-SXM4-40GB": "A100",
    "A100-80G": "A100-80GB",
    "A100-SXM4-80GB": "A100-80GB",
    "V100-32GB": "V100",
    "V100-32G": "V100",
    "H100-80GB": "H100",
    "H100-SXM": "H100",
    "H200-141GB": "H200",
    "B200-180GB": "B200",
    "L40S-48GB": "L40S",
    "T4-16GB": "T4",
}


def canonical_gpu_name(model: str, memory_mib: int) -> str:
    """AWS reports p4de's GPU as plain "A100"; it is the 80 GB part, which users ask for by that name."""
    if model == "A100" and memory_mib >= 80 * 1024:
        return "A100-80GB"
    return model


def moto_resources() -> Path:
    import moto  # the pinned dev dependency carries AWS's instance data

    return Path(moto.__file__).parent / "ec2" / "resources"


def read_prices(path: Path) -> tuple[dict[str, float], list[str]]:
    header: list[str] = []
    rows: list[str] = []
    for line in path.read_text().splitlines():
        (header if line.startswith("#") else rows).append(line)
    prices = {row["instance_type"]: float(row["usd_per_hour"]) for row in csv.DictReader(rows)}
    return prices, [line.lstrip("# ").rstrip() for line in header]


def prices_from_offer_file(path: Path, wanted: set[str]) -> dict[str, float]:
    """On-demand, Linux, shared tenancy, no pre-installed software, capacity 'Used' rows of AWS's price list CSV."""
    prices: dict[str, float] = {}
    with path.open(newline="") as handle:
        for line in handle:  # the file starts with a few metadata lines before the header row
            if line.startswith('"SKU"'):
                break
        else:
            raise SystemExit(f'{path}: no header row starting with "SKU"; is this AWS\'s EC2 price list CSV?')
        header = next(csv.reader([line]))
        for row in csv.reader(handle):
            record = dict(zip(header, row, strict=False))
            if (
                record.get("Instance Type") in wanted
                and record.get("TermType") == "OnDemand"
                and record.get("Operating System") == "Linux"
                and record.get("Tenancy") == "Shared"
                and record.get("Pre Installed S/W") == "NA"
                and record.get("CapacityStatus") == "Used"
                and record.get("Unit") in {"Hrs", "Hours"}
            ):
                prices[record["Instance Type"]] = float(record["PricePerUnit"])
    return prices


def write_prices(path: Path, prices: dict[str, float], source: str) -> None:
    lines = [
        "# On-demand Linux list prices, USD per hour, us-east-1, shared tenancy.",
        f"# source: {source}; copied {dt.date.today().isoformat()}.",
        "instance_type,usd_per_hour",
    ]
    lines += [
        f"{name},{price:g}" for name, price in sorted(prices.items(), key=lambda kv: (_family_rank(kv[0]), kv[0]))
    ]
    path.write_text("\n".join(lines) + "\n")


def _family_rank(instance_type: str) -> int:
    order = GPU_FAMILIES + CPU_FAMILIES
    family = instance_type.split(".")[0]
    return order.index(family) if family in order else len(order)


def build(prices: dict[str, float], price_notes: list[str]) -> dict[str, Any]:
    resources = moto_resources()
    with gzip.open(resources / "instance_types.json.gz") as handle:
        specs = json.loads(handle.read())
    regions_by_type: dict[str, set[str]] = {}
    all_regions: list[str] = []
    for path in sorted((resources / "instance_type_offerings" / "region").glob("*.json.gz")):
        region = path.name.split(".")[0]
        all_regions.append(region)
        with gzip.open(path) as handle:
            offers = json.loads(handle.read())
        for offer in offers:
            regions_by_type.setdefault(offer["InstanceType"], set()).add(region)

    instance_types: dict[str, dict[str, Any]] = {}
    ours = [name for name in specs if name.split(".")[0] in GPU_FAMILIES + CPU_FAMILIES]
    for name in sorted(ours, key=lambda n: (_family_rank(n), specs[n]["VCpuInfo"]["DefaultVCpus"], n)):
        family = name.split(".")[0]
        spec = specs[name]
        if "x86_64" not in spec["ProcessorInfo"]["SupportedArchitectures"]:
            continue
        gpus = spec.get("GpuInfo", {}).get("Gpus", [])
        if family in GPU_FAMILIES and not gpus:
            raise SystemExit(f"{name}: a GPU family without GPU info in AWS's data")
        gpu = gpus[0] if gpus else None
        instance_types[name] = {
            "family": family,
            "vcpus": spec["VCpuInfo"]["DefaultVCpus"],
            "memory_gib": round(spec["MemoryInfo"]["SizeInMiB"] / 1024, 3),
            "gpu": canonical_gpu_name(gpu["Name"], gpu["MemoryInfo"]["SizeInMiB"]) if gpu else None,
            "gpu_count": gpu["Count"] if gpu else 0,
            "gpu_memory_gib": round(gpu["MemoryInfo"]["SizeInMiB"] / 1024, 1) if gpu else None,
            "spot": "spot" in spec.get("SupportedUsageClasses", []),
            "price_per_hour": prices.get(name),
            "regions": sorted(regions_by_type.get(name, set())),
        }
    missing = sorted(set(prices) - set(instance_types))
    if missing:
        raise SystemExit(f"prices given for types AWS's data does not have: {', '.join(missing)}")
    gpu_names = sorted({t["gpu"] for t in instance_types.values() if t["gpu"]})
    for alias, target in GPU_ALIASES.items():
        if target not in gpu_names:
            raise SystemExit(f"alias {alias} points at {target}, which is not in the catalog")
    return {
        "schema_version": 1,
        "prices": {"region": "us-east-1", "currency": "USD", "unit": "hour", "notes": price_notes},
        "regions": all_regions,
        "gpu_aliases": GPU_ALIASES,
        "gpus": gpu_names,
        "instance_types": instance_types,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed catalog is out of date")
    parser.add_argument("--offer-file", type=Path, help="AWS EC2 price list CSV to refresh prices from")
    parser.add_argument("--prices", type=Path, default=PRICES)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    prices, notes = read_prices(args.prices)
    if args.offer_file:
        wanted = (
            {name for name in json.loads(args.output.read_text())["instance_types"]} if args.output.exists() else set()
        )
        wanted |= set(prices)
        fresh = prices_from_offer_file(args.offer_file, wanted)
        if not fresh:
            raise SystemExit(f"{args.offer_file}: no on-demand Linux rows for our instance types")
        write_prices(args.prices, fresh, f"AWS price list file {args.offer_file.name}")
        prices, notes = read_prices(args.prices)

    text = json.dumps(build(prices, notes), indent=1, sort_keys=False) + "\n"
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/refresh_catalog.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output.relative_to(ROOT)}: {len(json.loads(text)['instance_types'])} instance types")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
