"""The instance catalog: data sanity, GPU names, and selection of the cheapest instance type for a spec."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core import catalog
from controlplane.core.catalog import DATA_FILE, InstanceType
from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import Resources, parse_memory_gib

CATALOG = catalog.get()
RAW = json.loads(DATA_FILE.read_text())
CURRENT_GEN_CPU_FAMILIES = {"m7i", "c7i", "r7i", "m7a", "c7a", "r7a"}
REQUIRED_FAMILIES = [
    "g4dn",
    "g5",
    "g6",
    "g6e",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "p6-b200",
    "p3dn",
    *sorted(CURRENT_GEN_CPU_FAMILIES),
]


def _select(region: str = "us-east-1", **resources: Any) -> catalog.Selection:
    return CATALOG.select(Resources(**resources), region)


# -- data sanity -------------------------------------------------------------------------------------------------


def test_given_the_data_file_then_it_loads_into_the_same_catalog_and_is_cached() -> None:
    assert catalog.get() is CATALOG
    assert set(CATALOG.instances) == set(RAW["instance_types"])
    assert CATALOG.regions == tuple(RAW["regions"])
    assert CATALOG.gpus == tuple(RAW["gpus"])
    assert len(CATALOG.regions) == len(set(CATALOG.regions))


@pytest.mark.parametrize("name", sorted(CATALOG.instances))
def test_given_each_instance_type_then_its_data_is_sane(name: str) -> None:
    instance = CATALOG.instances[name]
    assert instance.name == name
    assert name.startswith(f"{instance.family}.")
    assert isinstance(instance.vcpus, int)
    assert instance.vcpus > 0
    assert instance.memory_gib > 0
    assert instance.regions
    assert len(set(instance.regions)) == len(instance.regions)
    assert set(instance.regions) <= set(CATALOG.regions)
    assert instance.price_per_hour is None or instance.price_per_hour > 0
    if instance.gpu is None:
        assert instance.gpu_count == 0
        assert instance.gpu_memory_gib is None
    else:
        assert instance.gpu in CATALOG.gpus
        assert instance.gpu_count > 0
        assert instance.gpu_memory_gib is not None
        assert instance.gpu_memory_gib > 0


@pytest.mark.parametrize("name", ["p5.4xlarge", "p5e.48xlarge", "p6-b200.48xlarge"])
def test_given_the_newest_gpu_types_then_they_are_in_the_catalog(name: str) -> None:
    assert name in CATALOG.instances


@pytest.mark.parametrize("family", REQUIRED_FAMILIES)
def test_given_each_supported_family_then_it_is_present(family: str) -> None:
    assert any(t.family == family for t in CATALOG.instances.values())


def test_given_the_gpu_list_then_every_gpu_has_instances_and_every_alias_points_at_a_gpu() -> None:
    for gpu in CATALOG.gpus:
        assert CATALOG.valid_counts(gpu), gpu
    for alias, target in RAW["gpu_aliases"].items():
        assert target in CATALOG.gpus, alias
        assert CATALOG.canonical_gpu(alias) == target


# -- GPU names, counts, regions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("A100", "A100"),
        ("a100", "A100"),
        ("A100-40GB", "A100"),
        ("a100_40gb", "A100"),
        ("A10", "A10G"),
        ("a10g", "A10G"),
        ("V100-32GB", "V100"),
        ("l40s", "L40S"),
        ("A100-80GB", "A100-80GB"),
        ("h100_sxm", "H100"),
    ],
)
def test_given_a_gpu_name_alias_or_case_then_canonical_gpu_resolves_it(name: str, canonical: str) -> None:
    assert CATALOG.canonical_gpu(name) == canonical


def test_given_an_unknown_gpu_then_canonical_gpu_lists_gpus_with_families_and_counts() -> None:
    with pytest.raises(ValueError, match="'A1000'") as raised:
        CATALOG.canonical_gpu("A1000")
    message = str(raised.value)
    assert "T4 (g4dn; counts 1, 4, 8)" in message
    assert "H200 (p5e/p5en; counts 8)" in message
    assert "not sold on AWS" not in message  # ec2jobs cannot know that of every name


@pytest.mark.parametrize(
    ("name", "sold_in"),
    [
        ("Inferentia", "inf1 and inf2"),
        ("inferentia2", "inf2"),
        ("Trainium", "trn1 and trn2"),
        ("trainium2", "trn2"),
    ],
)
def test_given_an_aws_neuron_accelerator_then_the_error_says_aws_sells_it_but_ec2jobs_does_not_support_it(
    name: str, sold_in: str
) -> None:
    # Given SkyPilot's `accelerators: Inferentia:6` (before: "is not sold on AWS", which is false)
    with pytest.raises(ValueError) as raised:
        CATALOG.canonical_gpu(name)
    message = str(raised.value)
    # Then it says where AWS sells it, that ec2jobs does not support it yet, and what ec2jobs runs instead
    assert f"{name!r} is sold on AWS" in message
    assert f"in {sold_in} instances" in message
    assert "ec2jobs does not support it yet" in message
    assert "not sold" not in message
    assert "GPU types: " in message


def test_given_a_google_tpu_then_the_error_says_aws_does_not_sell_tpus() -> None:
    with pytest.raises(ValueError, match="Google Cloud TPU, which AWS does not sell"):
        CATALOG.canonical_gpu("tpu-v4-8")


@pytest.mark.parametrize(
    ("gpu", "counts"),
    [
        ("T4", [1, 4, 8]),
        ("A10G", [1, 4, 8]),
        ("L4", [1, 4, 8]),
        ("L40S", [1, 4, 8]),
        ("A100", [8]),
        ("A100-80GB", [8]),
        ("V100", [8]),
        ("H100", [1, 8]),
        ("H200", [8]),
        ("B200", [8]),
        ("NOPE", []),
    ],
)
def test_given_a_gpu_then_valid_counts_are_sorted_and_distinct(gpu: str, counts: list[int]) -> None:
    assert CATALOG.valid_counts(gpu) == counts


def test_given_a_region_then_check_region_accepts_known_and_rejects_unknown() -> None:
    assert CATALOG.check_region("eu-west-1") == "eu-west-1"
    with pytest.raises(ValueError, match="'mars-1'") as raised:
        CATALOG.check_region("mars-1")
    assert "us-east-1" in str(raised.value)


def test_given_an_unknown_region_when_selecting_then_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match="mars-1"):
        CATALOG.select(Resources(), "mars-1")


# -- describe ----------------------------------------------------------------------------------------------------


def test_given_no_filter_when_describing_then_everything_is_listed() -> None:
    described = CATALOG.describe()
    assert [t["instance_type"] for t in described["instance_types"]] == list(CATALOG.instances)
    assert [g["gpu"] for g in described["gpus"]] == list(CATALOG.gpus)
    assert described["regions"] == list(CATALOG.regions)
    assert described["prices"]["currency"] == "USD"


def test_given_eu_west_1_when_describing_then_only_types_offered_there_are_listed() -> None:
    # Given eu-west-1, When describing it
    described = CATALOG.describe(region="eu-west-1")
    listed = [t["instance_type"] for t in described["instance_types"]]
    # Then every listed type is offered there, and every type offered there is listed
    assert all("eu-west-1" in t["regions"] for t in described["instance_types"])
    assert listed == [t.name for t in CATALOG.instances.values() if "eu-west-1" in t.regions]
    assert "p5.4xlarge" not in listed
    assert "p4d.24xlarge" in listed
    # And the GPU summary only names types listed there
    for gpu in described["gpus"]:
        assert set(gpu["instance_types"]) <= set(listed)
    assert "H100" not in {g["gpu"] for g in described["gpus"]}


def test_given_a_gpu_filter_when_describing_then_only_that_gpu_is_listed() -> None:
    described = CATALOG.describe(gpu="T4")
    assert {t["gpu"] for t in described["instance_types"]} == {"T4"}
    assert described["gpus"] == [
        {
            "gpu": "T4",
            "gpu_memory_gib": 16.0,
            "counts": [1, 4, 8],
            "instance_types": [t.name for t in CATALOG.instances.values() if t.gpu == "T4"],
        }
    ]


# -- selection ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accelerators", "instance_type"),
    [
        ("A100:8", "p4d.24xlarge"),
        ("A100-80GB:8", "p4de.24xlarge"),
        ("H100:1", "p5.4xlarge"),
        ("T4:4", "g4dn.12xlarge"),
        ("a10:1", "g5.xlarge"),
        ("A100-40GB:8", "p4d.24xlarge"),
        ("v100-32gb:8", "p3dn.24xlarge"),
        ("l40s", "g6e.xlarge"),
        ({"A100": 8}, "p4d.24xlarge"),
        ("T4", "g4dn.xlarge"),
        ("H200:8", "p5en.48xlarge"),
    ],
)
def test_given_a_gpu_request_in_us_east_1_when_selecting_then_the_expected_instance(
    accelerators: Any, instance_type: str
) -> None:
    selection = _select(accelerators=accelerators)
    assert selection.instance_type == instance_type
    assert selection.region == "us-east-1"
    assert selection.hourly_price == CATALOG.instances[instance_type].price_per_hour


def test_given_h100_1_when_selecting_then_p5_4xlarge_with_a_missing_price_note() -> None:
    selection = _select(accelerators="H100:1")
    assert selection.instance_type == "p5.4xlarge"
    assert selection.hourly_price is None
    assert any("no on-demand list price" in note and "p5.4xlarge" in note for note in selection.notes)


def test_given_a10g_1_with_at_least_16_cpus_when_selecting_then_the_cheapest_big_enough_g5() -> None:
    # Given the g5 types with one A10G and at least 16 vCPUs, computed from the catalog data
    fitting = [
        t
        for t in CATALOG.instances.values()
        if t.family == "g5" and t.gpu_count == 1 and t.vcpus >= 16 and "us-east-1" in t.regions
    ]
    cheapest = min(fitting, key=lambda t: t.price_per_hour or math.inf)
    # When selecting A10G:1 with cpus "16+"
    selection = _select(accelerators="A10G:1", cpus="16+")
    # Then it is the cheapest of them, which today is g5.4xlarge
    assert selection.instance_type == cheapest.name
    assert selection.instance_type == "g5.4xlarge"


def test_given_a_small_cpu_only_job_when_selecting_then_the_cheapest_small_current_generation_type() -> None:
    # Given a CPU-only job wanting exactly 2 vCPUs and 512MB (half a gigabyte, not 512 GiB)
    selection = _select(cpus="2", memory="512MB")
    chosen = selection.instance
    # Then it is a current-generation 2-vCPU type
    assert chosen.vcpus == 2
    assert chosen.gpu is None
    assert chosen.family in CURRENT_GEN_CPU_FAMILIES
    # And the cheapest such type offered in us-east-1
    minimum = parse_memory_gib("512MB").value
    same_kind = [
        t
        for t in CATALOG.instances.values()
        if t.family in CURRENT_GEN_CPU_FAMILIES
        and t.vcpus == 2
        and t.memory_gib >= minimum
        and "us-east-1" in t.regions
        and t.price_per_hour is not None
    ]
    assert chosen.price_per_hour == min(t.price_per_hour for t in same_kind if t.price_per_hour is not None)
    assert selection.notes == ()


def test_given_empty_resources_when_selecting_then_the_default_is_the_cheapest_with_at_least_2_vcpus() -> None:
    selection = _select()
    assert selection.instance.gpu is None
    assert selection.instance.vcpus >= 2
    assert selection.hourly_price is not None
    cheaper = [
        t
        for t in CATALOG.instances.values()
        if t.gpu is None
        and t.vcpus >= 2
        and "us-east-1" in t.regions
        and (t.price_per_hour or math.inf) < selection.hourly_price
    ]
    assert cheaper == []
    assert selection.instance_type == "c7i.large"


@pytest.mark.parametrize(
    ("resources", "instance_type"),
    [
        ({"cpus": "8"}, "c7i.2xlarge"),
        ({"cpus": "8", "memory": "64"}, "r7i.2xlarge"),
        ({"cpus": "8+", "memory": "128"}, "r7i.4xlarge"),
        ({"memory": "1.5TiB"}, "r7i.48xlarge"),
        ({"accelerators": "T4:1", "memory": "100"}, "g4dn.8xlarge"),
        ({"accelerators": "A10G:4", "cpus": "48"}, "g5.12xlarge"),
        ({"accelerators": "A10G:4", "cpus": "49+"}, "g5.24xlarge"),
    ],
)
def test_given_cpu_and_memory_requirements_when_selecting_then_the_cheapest_that_fits(
    resources: dict[str, Any], instance_type: str
) -> None:
    assert _select(**resources).instance_type == instance_type


@pytest.mark.parametrize(
    ("accelerators", "counts_text", "counts"),
    [("T4:16", "1, 4, 8", [1, 4, 8]), ("A100:4", "8", [8]), ("V100:1", "8", [8])],
)
def test_given_an_unsold_gpu_count_when_selecting_then_invalid_spec_names_the_valid_counts(
    accelerators: str, counts_text: str, counts: list[int]
) -> None:
    # Given a count AWS does not sell, When selecting
    with pytest.raises(InvalidSpec) as raised:
        _select(accelerators=accelerators)
    # Then the message names the valid counts and the details carry them
    gpu = accelerators.split(":")[0]
    assert f"Valid counts for {gpu}: {counts_text} (" in raised.value.message
    assert raised.value.details == [{"field": "resources.accelerators", "valid_counts": counts}]
    assert raised.value.code == "INVALID_SPEC"


def test_given_a_region_without_the_type_when_selecting_then_invalid_spec_lists_regions_that_offer_it() -> None:
    # Given H100:1 (only p5.4xlarge), which eu-west-1 does not offer
    with pytest.raises(InvalidSpec) as raised:
        _select(region="eu-west-1", accelerators="H100:1")
    # Then the message says so and lists the regions that do offer it
    message = raised.value.message
    offered = sorted(CATALOG.instances["p5.4xlarge"].regions)
    assert "not offered in eu-west-1" in message
    assert "p5.4xlarge" in message
    assert "us-east-1" in message
    assert f"Regions that offer it: {', '.join(offered)}" in message
    assert raised.value.details == [{"field": "resources.region", "regions": offered}]


def test_given_a_region_that_offers_it_when_selecting_then_the_region_is_used() -> None:
    selection = _select(region="eu-west-2", accelerators="H100:1")
    assert selection.instance_type == "p5.4xlarge"
    assert selection.region == "eu-west-2"


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ({"cpus": "7"}, "no CPU-only instance has exactly 7 vCPUs"),
        ({"accelerators": "T4:1", "cpus": "3"}, "no T4:1 instance has exactly 3 vCPUs"),
        ({"memory": "2000"}, "no CPU-only instance has at least 2000 GiB of memory"),
        ({"cpus": "2", "memory": "64"}, "no CPU-only instance has at least 64 GiB of memory"),
        ({"cpus": "8", "memory": "128"}, "no CPU-only instance has at least 128 GiB of memory"),
    ],
)
def test_given_unsatisfiable_cpus_or_memory_when_selecting_then_invalid_spec_lists_what_is_offered(
    resources: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidSpec) as raised:
        _select(**resources)
    assert fragment in raised.value.message
    assert " instances have " in raised.value.message


def test_given_cpus_7_when_selecting_then_invalid_spec_lists_the_offered_vcpu_counts() -> None:
    with pytest.raises(InvalidSpec) as raised:
        _select(cpus=7)
    offered = sorted({t.vcpus for t in CATALOG.instances.values() if t.gpu is None})
    assert f"CPU-only instances have {', '.join(map(str, offered))} vCPUs" in raised.value.message


def test_given_a_pinned_instance_type_when_selecting_then_it_is_used() -> None:
    assert _select(instance_type="g5.2xlarge").instance_type == "g5.2xlarge"
    assert _select(instance_type="g5.2xlarge", accelerators="A10G:1").instance_type == "g5.2xlarge"


def test_given_a_pinned_type_that_contradicts_the_accelerators_when_selecting_then_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match=re.escape("instance_type g5.2xlarge has A10G:1, not T4:1: drop one")):
        _select(instance_type="g5.2xlarge", accelerators="T4")
    with pytest.raises(InvalidSpec, match="has no GPU, not T4:1"):
        _select(instance_type="m7i.large", accelerators="T4")


def test_given_an_alias_when_selecting_then_the_gpu_is_the_canonical_one() -> None:
    selection = _select(accelerators="a10:1")
    assert (selection.instance.gpu, selection.instance.gpu_count) == ("A10G", 1)


def test_given_an_alias_when_selecting_then_a_note_says_what_aws_calls_it() -> None:
    selection = _select(accelerators="a10:1")
    assert any("A10G" in note for note in selection.notes)


# -- property: any sold GPU and count, in any case, selects a matching instance ----------------------------------

_NAMES_BY_GPU: dict[str, list[str]] = {
    gpu: [gpu, *(alias for alias, target in RAW["gpu_aliases"].items() if target == gpu)] for gpu in CATALOG.gpus
}


@st.composite
def sold_accelerators(draw: st.DrawFn) -> tuple[str, str, int, str]:
    gpu = draw(st.sampled_from(CATALOG.gpus))
    count = draw(st.sampled_from(CATALOG.valid_counts(gpu)))
    regions = sorted(
        {r for t in CATALOG.instances.values() if t.gpu == gpu and t.gpu_count == count for r in t.regions}
    )
    region = draw(st.sampled_from(regions))
    name = draw(st.sampled_from(_NAMES_BY_GPU[gpu]))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    cased = "".join(c.lower() if flip else c.upper() for c, flip in zip(name, flips, strict=True))
    return gpu, f"{cased}:{count}", count, region


def _cheapest_key(instance: InstanceType) -> tuple[bool, float]:
    return (instance.price_per_hour is None, instance.price_per_hour or 0.0)


@settings(max_examples=200, deadline=None, database=None)
@given(sold_accelerators())
def test_property_given_a_sold_gpu_and_count_in_any_case_when_selecting_then_gpu_and_count_match(
    case: tuple[str, str, int, str],
) -> None:
    gpu, accelerators, count, region = case
    selection = CATALOG.select(Resources(accelerators=accelerators), region)
    assert selection.instance.gpu == gpu
    assert selection.instance.gpu_count == count
    assert region in selection.instance.regions
    rivals = [t for t in CATALOG.instances.values() if t.gpu == gpu and t.gpu_count == count and region in t.regions]
    assert _cheapest_key(selection.instance) == min(_cheapest_key(t) for t in rivals)
