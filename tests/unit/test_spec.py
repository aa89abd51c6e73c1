"""The task spec: parsing of cpus / memory / accelerators and validation of every TaskSpec field.

Every rejection must be a pydantic ValidationError (the API maps it to 400) whose message says what is allowed;
nothing a client can send may crash the parser with any other exception.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controlplane.core import catalog
from controlplane.core.errors import InvalidSpec
from controlplane.core.spec import (
    DEFAULT_CPU_ONLY_CPUS,
    DISK_DEFAULT_GIB,
    MAX_CPUS,
    MAX_ENV_VARS,
    MAX_GPU_COUNT,
    MAX_RUNTIME_DEFAULT_MINUTES,
    MAX_RUNTIME_LIMIT_MINUTES,
    RESERVED_ENV_PREFIX,
    Accelerator,
    Amount,
    Resources,
    TaskSpec,
    parse_accelerator,
    parse_cpus,
    parse_memory_gib,
)

GIB = 2**30
PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    database=None,  # write nothing into the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


def _spec(**fields: Any) -> TaskSpec:
    return TaskSpec.model_validate({"run": "echo hi", **fields})


def _error_text(raised: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(raised.value)


# -- constants ---------------------------------------------------------------------------------------------------


def test_given_the_module_constants_then_they_have_the_documented_values() -> None:
    assert MAX_RUNTIME_DEFAULT_MINUTES == 720
    assert MAX_RUNTIME_LIMIT_MINUTES == 10080
    assert DISK_DEFAULT_GIB == 256
    assert RESERVED_ENV_PREFIX == "EC2JOBS_"
    assert DEFAULT_CPU_ONLY_CPUS == "2+"


# -- Amount ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "offered", "expected"),
    [
        (Amount(8, at_least=False), 8, True),
        (Amount(8, at_least=False), 16, False),
        (Amount(8, at_least=False), 4, False),
        (Amount(8, at_least=True), 8, True),
        (Amount(8, at_least=True), 16, True),
        (Amount(8, at_least=True), 7, False),
        (Amount(512e6 / GIB, at_least=True), 0.5, True),
    ],
)
def test_given_an_amount_when_checking_an_offer_then_exact_and_at_least_differ(
    amount: Amount, offered: float, expected: bool
) -> None:
    assert amount.satisfied_by(offered) is expected


@pytest.mark.parametrize(
    ("amount", "text"),
    [(Amount(8.0, at_least=False), "8"), (Amount(8.0, at_least=True), "8+"), (Amount(0.5, at_least=True), "0.5+")],
)
def test_given_an_amount_when_formatted_then_plus_marks_at_least(amount: Amount, text: str) -> None:
    assert str(amount) == text


# -- cpus --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "at_least"),
    [
        ("8", 8.0, False),
        ("8+", 8.0, True),
        (" 8 + ", 8.0, True),
        (8, 8.0, False),
        (8.0, 8.0, False),
        ("1", 1.0, False),
        (str(MAX_CPUS), float(MAX_CPUS), False),
    ],
)
def test_given_a_cpus_value_when_parsed_then_exact_or_at_least(raw: Any, value: float, at_least: bool) -> None:
    assert parse_cpus(raw) == Amount(value, at_least=at_least)


@pytest.mark.parametrize("raw", ["abc", "0", "1.5", True, False, None, "8GB", "-1", "", "8++", MAX_CPUS + 1, [8]])
def test_given_an_invalid_cpus_value_when_parsed_then_value_error_says_what_is_allowed(raw: Any) -> None:
    with pytest.raises(ValueError, match="cpus") as raised:
        parse_cpus(raw)
    message = str(raised.value)
    assert "whole number" in message or "too large" in message


@pytest.mark.parametrize("raw", ["abc", "0", "1.5", True])
def test_given_an_invalid_cpus_value_when_building_resources_then_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        Resources(cpus=raw)
    errors = raised.value.errors()
    assert [e["loc"] for e in errors] == [("cpus",)]
    assert "cpus" in errors[0]["msg"]


@pytest.mark.parametrize(("raw", "stored", "at_least"), [("8", "8", False), ("8+", "8+", True), (8, "8", False)])
def test_given_cpus_when_building_resources_then_exact_and_at_least_are_kept_apart(
    raw: Any, stored: str, at_least: bool
) -> None:
    resources = Resources(cpus=raw)
    assert resources.cpus == stored
    assert resources.cpu_requirement == Amount(8.0, at_least=at_least)


def test_given_cpus_8_exact_when_selecting_cpu_only_then_the_instance_has_exactly_8_vcpus() -> None:
    # Given a CPU-only job asking for exactly 8 vCPUs
    resources = Resources(cpus="8")
    # When selecting in us-east-1
    selection = catalog.get().select(resources, "us-east-1")
    # Then the instance has exactly 8 vCPUs
    assert selection.instance.vcpus == 8
    assert selection.instance.gpu is None


def test_given_cpus_7_exact_when_selecting_then_invalid_spec_lists_offered_vcpu_counts() -> None:
    # Given a CPU-only job asking for exactly 7 vCPUs (no instance has 7)
    resources = Resources(cpus=7)
    # When selecting
    with pytest.raises(InvalidSpec) as raised:
        catalog.get().select(resources, "us-east-1")
    # Then the message lists every vCPU count CPU-only instances offer
    offered = sorted({t.vcpus for t in catalog.get().instances.values() if t.gpu is None})
    assert "exactly 7 vCPUs" in raised.value.message
    assert ", ".join(str(v) for v in offered) in raised.value.message


def test_given_cpus_7_at_least_when_selecting_then_an_8_vcpu_instance_is_chosen() -> None:
    # Given "7+" (at least), unlike "7" (exactly), When selecting, Then the smallest bigger size is fine
    selection = catalog.get().select(Resources(cpus="7+"), "us-east-1")
    assert selection.instance.vcpus == 8


# -- memory ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "gib"),
    [
        ("512MB", 0.5),  # SkyPilot's units: GB = GiB (2**30 bytes), MB = MiB
        ("16GB", 16.0),
        ("1.5TiB", 1536.0),
        ("32", 32.0),
        ("32+", 32.0),
        ("4G", 4.0),
        ("512MiB", 0.5),
        ("512M", 0.5),
        ("2KiB", 2 / 1024**2),
        ("1TB", 1024.0),
        ("1Ti", 1024.0),
        ("64gb", 64.0),
        ("1T", 1024.0),
        ("16 gib", 16.0),
        (16, 16.0),
        (0.5, 0.5),
    ],
)
def test_given_a_memory_size_when_parsed_then_it_is_a_minimum_in_gib(raw: Any, gib: float) -> None:
    amount = parse_memory_gib(raw)
    assert math.isclose(amount.value, gib, rel_tol=1e-12)
    assert amount.at_least is True


def test_given_512mb_when_parsed_then_it_is_half_a_gib_never_512_gib() -> None:
    amount = parse_memory_gib("512MB")
    assert amount.value == 0.5
    assert Resources(memory="512MB").memory_requirement == amount


def test_given_an_unknown_memory_unit_when_parsed_then_the_error_names_allowed_units() -> None:
    with pytest.raises(ValueError, match="unknown unit 'parsecs'") as raised:
        parse_memory_gib("12parsecs")
    message = str(raised.value)
    for unit in ("MB", "GB", "TB", "MiB", "GiB", "TiB"):
        assert unit in message
    assert "1 GB = 1 GiB" in message


@pytest.mark.parametrize("raw", ["0", "0GB", "-4", "abc", "", True, None, [], "99999TiB", float("inf"), float("nan")])
def test_given_invalid_memory_when_parsed_then_value_error(raw: Any) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory_gib(raw)


@pytest.mark.parametrize("raw", ["12parsecs", "0", "abc", True])
def test_given_invalid_memory_when_building_resources_then_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        Resources(memory=raw)
    assert [e["loc"] for e in raised.value.errors()] == [("memory",)]


def test_given_memory_when_building_resources_then_the_text_is_kept_as_written() -> None:
    assert Resources(memory=" 64GB ").memory == "64GB"
    assert Resources(memory=32).memory == "32"


# -- accelerators ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name", "count"),
    [
        ("A100:8", "A100", 8),
        ("a100:8", "A100", 8),
        ("A100-40GB", "A100", 1),
        ("A100-40GB:8", "A100", 8),
        ("a10:1", "A10G", 1),
        ("a10", "A10G", 1),
        ("A10G", "A10G", 1),
        ("v100-32gb:8", "V100", 8),
        ("l40s", "L40S", 1),
        ("h100-sxm:8", "H100", 8),
        ("A100-80G:8", "A100-80GB", 8),
        (" T4 : 4 ", "T4", 4),
        ("T4:4.0", "T4", 4),
        ({"A100": 8}, "A100", 8),
        ({"t4": "4"}, "T4", 4),
    ],
)
def test_given_an_accelerator_alias_or_case_when_parsed_then_the_canonical_name_and_count(
    raw: Any, name: str, count: int
) -> None:
    accelerator = parse_accelerator(raw)
    assert (accelerator.name, accelerator.count) == (name, count)


def test_given_an_alias_when_parsed_then_what_the_user_wrote_is_remembered() -> None:
    assert parse_accelerator("a10:1") == Accelerator(name="A10G", count=1, requested_as="a10")


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("a10:1", "A10G:1"),
        ("A100-40GB", "A100:1"),
        ("v100-32gb:8", "V100:8"),
        ("l40s", "L40S:1"),
        ({"A100": 8}, "A100:8"),
    ],
)
def test_given_an_accelerator_when_building_resources_then_it_is_stored_canonically(raw: Any, stored: str) -> None:
    assert Resources(accelerators=raw).accelerators == stored


def test_given_an_unknown_gpu_when_building_resources_then_the_error_lists_known_gpu_types() -> None:
    # Given "A1000", which AWS does not sell
    with pytest.raises(ValidationError) as raised:
        Resources(accelerators="A1000")
    # Then the message names it and lists every GPU type the catalog knows
    message = _error_text(raised)
    assert "'A1000'" in message
    assert "GPU types:" in message
    for gpu in catalog.get().gpus:
        assert gpu in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("A100:abc", "whole number"),
        ("A100:0", f"from 1 to {MAX_GPU_COUNT}"),
        ("A100:1.5", f"from 1 to {MAX_GPU_COUNT}"),
        (f"A100:{MAX_GPU_COUNT + 1}", f"from 1 to {MAX_GPU_COUNT}"),
        ("A100:", "whole number"),
        (":8", "TYPE[:COUNT]"),
        ("", "TYPE[:COUNT]"),
        ({"A100": 8, "T4": 1}, "one GPU type"),
        ({}, "one GPU type"),
        (8, "must be a string"),
        (["A100:8"], "one GPU type"),
        (["L4", "A10G"], "does not choose among several types"),
        ({"L4": None, "T4": None}, "does not choose among several types"),
    ],
)
def test_given_a_malformed_accelerator_when_parsed_then_value_error_explains(raw: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="accelerators") as raised:
        parse_accelerator(raw)
    assert fragment in str(raised.value)


# -- resources: other fields -------------------------------------------------------------------------------------


def test_given_empty_resources_then_defaults_apply() -> None:
    resources = Resources()
    assert resources.model_dump() == {
        "accelerators": None,
        "cpus": None,
        "memory": None,
        "disk_size": DISK_DEFAULT_GIB,
        "use_spot": False,
        "region": None,
        "instance_type": None,
    }
    assert resources.accelerator is None
    assert resources.cpu_requirement is None
    assert resources.memory_requirement is None


@pytest.mark.parametrize(
    ("raw", "gib"),
    [
        (8, 8),
        ("100", 100),
        ("100GiB", 100),
        ("100GB", 100),
        (16384, 16384),
        ("1024GB", 1024),  # SkyPilot's `disk_size: "1024GB"`: GB = GiB, as for memory
        ("1TB", 1024),
        ("1T", 1024),
        ("1.5TiB", 1536),
        ("524288MB", 512),
        (512.0, 512),
    ],
)
def test_given_a_valid_disk_size_then_it_is_whole_gib(raw: Any, gib: int) -> None:
    assert Resources(disk_size=raw).disk_size == gib


@pytest.mark.parametrize("size", ["16GB", "1TB", "512MB", "2T", "64"])
def test_given_one_size_then_disk_size_and_memory_read_it_in_the_same_units(size: str) -> None:
    # Given the same text for memory and (where it is a whole number of GiB) disk_size, Then both mean the same GiB
    memory = parse_memory_gib(size).value
    if memory.is_integer() and memory >= 8:
        assert Resources(disk_size=size).disk_size == memory
    assert memory == {"16GB": 16, "1TB": 1024, "512MB": 0.5, "2T": 2048, "64": 64}[size]


@pytest.mark.parametrize(
    "raw", [7, 16385, "abc", 8.5, True, None, [100], "1.5GB", "100MB", "512+", "17TB", "12parsecs"]
)
def test_given_an_invalid_disk_size_then_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError, match="disk_size"):
        Resources(disk_size=raw)


@pytest.mark.parametrize(("raw", "expected"), [(True, True), (False, False), ("true", True), (" FALSE ", False)])
def test_given_a_use_spot_flag_then_it_is_a_bool(raw: Any, expected: bool) -> None:
    assert Resources(use_spot=raw).use_spot is expected


@pytest.mark.parametrize("raw", ["auto", " AUTO ", "Auto"])
def test_given_use_spot_auto_in_any_case_then_it_is_auto(raw: Any) -> None:
    assert Resources(use_spot=raw).use_spot == "auto"


@pytest.mark.parametrize(
    ("use_spot", "markets"),
    [(True, ["spot"]), (False, ["on-demand"]), ("auto", ["spot", "on-demand"])],
)
def test_given_use_spot_then_the_markets_are_tried_in_this_order(use_spot: Any, markets: list[str]) -> None:
    assert [str(m) for m in Resources(use_spot=use_spot).markets] == markets


@pytest.mark.parametrize("raw", ["yes", "spot", "automatic", 1, 0, None, ["auto"]])
def test_given_a_use_spot_that_is_not_true_false_or_auto_then_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError, match='use_spot must be true, false or "auto"'):
        Resources(use_spot=raw)


def test_given_use_spot_auto_then_the_json_schema_describes_it() -> None:
    schema = TaskSpec.model_json_schema()["$defs"]["Resources"]["properties"]["use_spot"]
    assert {"type": "boolean"} in schema["anyOf"]
    assert {"const": "auto", "type": "string"} in schema["anyOf"]
    assert '"auto"' in schema["description"]


def test_given_a_known_region_then_it_is_accepted_and_an_unknown_one_lists_regions() -> None:
    assert Resources(region=" eu-west-1 ").region == "eu-west-1"
    with pytest.raises(ValidationError) as raised:
        Resources(region="mars-1")
    assert "'mars-1'" in _error_text(raised)
    assert "us-east-1" in _error_text(raised)


def test_given_an_instance_type_then_only_catalog_types_are_accepted() -> None:
    assert Resources(instance_type="g5.xlarge").instance_type == "g5.xlarge"
    with pytest.raises(ValidationError) as raised:
        Resources(instance_type="x9.huge")
    assert "'x9.huge'" in _error_text(raised)
    assert "g5" in _error_text(raised)


def test_given_an_unknown_resources_field_then_validation_error() -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(resources={"gpus": "A100:8"})
    errors = raised.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("resources", "gpus"), "extra_forbidden")]


# -- task spec: top level ----------------------------------------------------------------------------------------


def test_given_a_minimal_spec_then_defaults_apply() -> None:
    spec = TaskSpec.model_validate({"run": "python train.py"})
    assert spec.run == "python train.py"
    assert spec.max_runtime_minutes == MAX_RUNTIME_DEFAULT_MINUTES == 720
    assert spec.envs == {}
    assert spec.setup is None
    assert spec.name is None
    assert spec.resources == Resources()


def test_given_an_unknown_top_level_field_then_validation_error() -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(colour="blue")
    errors = raised.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("colour",), "extra_forbidden")]


def test_given_no_run_then_validation_error_says_run_is_missing() -> None:
    with pytest.raises(ValidationError) as raised:
        TaskSpec.model_validate({"setup": "pip install x"})
    errors = raised.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("run",), "missing")]


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", None, 1, ["echo hi"]])
def test_given_an_empty_or_non_string_run_then_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError, match="run must be a non-empty string"):
        TaskSpec.model_validate({"run": raw})


def test_given_run_with_a_nul_byte_then_validation_error() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        TaskSpec.model_validate({"run": "echo a\x00b"})


@pytest.mark.parametrize(("raw", "expected"), [(None, MAX_RUNTIME_DEFAULT_MINUTES), (1, 1), (10080, 10080), ("60", 60)])
def test_given_a_valid_max_runtime_then_it_is_accepted(raw: Any, expected: int) -> None:
    assert _spec(max_runtime_minutes=raw).max_runtime_minutes == expected


@pytest.mark.parametrize("raw", [0, 10081, -5, 1.5, True, "abc", [60], float("nan"), float("inf")])
def test_given_an_out_of_range_max_runtime_then_validation_error_states_the_range(raw: Any) -> None:
    with pytest.raises(ValidationError, match="from 1 to 10080"):
        _spec(max_runtime_minutes=raw)


def test_given_a_huge_integer_max_runtime_then_validation_error_not_a_crash() -> None:
    with pytest.raises(ValidationError):
        _spec(max_runtime_minutes=10**400)


@pytest.mark.parametrize("raw", ["train-1", "a", "Job_2.v3", "x" * 128, " padded "])
def test_given_a_valid_name_then_it_is_accepted_stripped(raw: str) -> None:
    assert _spec(name=raw).name == raw.strip()


@pytest.mark.parametrize("raw", ["", "-lead", "has space", "x" * 129, "a/b", 7])
def test_given_an_invalid_name_then_validation_error_says_what_is_allowed(raw: Any) -> None:
    with pytest.raises(ValidationError, match="letters, digits"):
        _spec(name=raw)


def test_given_a_blank_setup_then_it_is_dropped() -> None:
    assert _spec(setup="   ").setup is None
    assert _spec(setup="pip install x").setup == "pip install x"


def test_given_null_resources_and_envs_then_defaults_apply() -> None:
    spec = _spec(resources=None, envs=None)
    assert spec.resources == Resources()
    assert spec.envs == {}


# -- envs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["FOO", "_x", "a1_B", "CUDA_VISIBLE_DEVICES", "EC2JOB", "MY_EC2JOBS_X"])
def test_given_a_valid_env_name_then_it_is_accepted(name: str) -> None:
    assert _spec(envs={name: "v"}).envs == {name: "v"}


def test_given_env_values_of_other_json_types_then_they_are_coerced_to_strings() -> None:
    spec = _spec(envs={"N": 3, "F": 1.5, "T": True, "B": False, "S": "s", "E": ""})
    assert spec.envs == {"N": "3", "F": "1.5", "T": "true", "B": "false", "S": "s", "E": ""}


def test_given_an_env_with_no_value_then_it_is_refused_with_how_to_pass_it() -> None:
    # Given SkyPilot's "must be supplied at launch" form (`HF_TOKEN:` in YAML is null), which used to run with an
    # empty variable
    with pytest.raises(ValidationError) as raised:
        _spec(envs={"MODEL": "llama", "HF_TOKEN": None})
    # Then the job is refused, and the sentence names the variable and how to pass it
    (error,) = raised.value.errors()
    assert error["loc"] == ("envs",)
    assert "HF_TOKEN has no value" in error["msg"]
    assert "`ec2jobs submit --env HF_TOKEN`" in error["msg"]
    assert "--env HF_TOKEN=VALUE" in error["msg"]


def test_given_several_envs_with_no_value_then_all_are_named() -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(envs={"HF_TOKEN": None, "BUCKET": None, "OK": "1"})
    assert "HF_TOKEN, BUCKET have no value" in _error_text(raised)


@pytest.mark.parametrize("name", ["1BAD", "A-B", "", "A B", "É"])
def test_given_an_invalid_env_name_then_the_message_says_what_is_allowed(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(envs={name: "v"})
    message = _error_text(raised)
    assert repr(name) in message
    assert "letters, digits and '_'" in message
    assert "not starting with a digit" in message


def test_given_an_env_name_with_a_trailing_newline_then_it_is_rejected() -> None:
    with pytest.raises(ValidationError, match="not a valid variable name"):
        _spec(envs={"FOO\n": "v"})


@pytest.mark.parametrize("name", ["EC2JOBS_JOB_ID", "ec2jobs_token", "EC2JOBS_"])
def test_given_a_reserved_env_prefix_then_validation_error(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(envs={name: "v"})
    message = _error_text(raised)
    assert "reserved" in message
    assert RESERVED_ENV_PREFIX in message


@pytest.mark.parametrize(
    ("envs", "fragment"),
    [
        (["A=1"], "mapping of NAME: value"),
        ("A=1", "mapping of NAME: value"),
        ({"A": [1]}, "string or a number"),
        ({"A": {"b": 1}}, "string or a number"),
        ({"A": "x\x00y"}, "NUL byte"),
        ({f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)}, f"at most {MAX_ENV_VARS}"),
    ],
)
def test_given_malformed_envs_then_validation_error_explains(envs: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _spec(envs=envs)
    assert fragment in _error_text(raised)


def test_given_exactly_the_maximum_number_of_envs_then_they_are_accepted() -> None:
    envs = {f"V{i}": str(i) for i in range(MAX_ENV_VARS)}
    assert len(_spec(envs=envs).envs) == MAX_ENV_VARS


# -- property tests: nothing a client sends crashes the parser ---------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

TOP_LEVEL_FIELDS = ["name", "resources", "envs", "setup", "run", "max_runtime_minutes"]
RESOURCE_FIELDS = ["accelerators", "cpus", "memory", "disk_size", "use_spot", "region", "instance_type"]
PLAUSIBLE_STRINGS = [
    "A100:8",
    "a10:1",
    "T4:4",
    "T4:16",
    "H100:1",
    "v100-32gb:8",
    "A1000",
    "8",
    "8+",
    "7",
    "0",
    "1.5",
    "512MB",
    "16GB",
    "1.5TiB",
    "32+",
    "12parsecs",
    "us-east-1",
    "eu-west-1",
    "mars-1",
    "g5.xlarge",
    "p4d.24xlarge",
    "true",
    "auto",
    "false",
    "echo hi",
    "",
    "  ",
    "train-1",
    "EC2JOBS_X",
]
PLAUSIBLE = (
    st.sampled_from(PLAUSIBLE_STRINGS)
    | st.text(max_size=16)
    | st.integers()
    | st.integers(min_value=-2, max_value=20_000)
    | st.floats()
    | st.booleans()
    | st.none()
)
ENV_DICTS = st.dictionaries(
    st.sampled_from(["A", "_b", "1BAD", "A-B", "EC2JOBS_X", ""]) | st.text(max_size=8), PLAUSIBLE
)
RESOURCE_DICTS = st.fixed_dictionaries({}, optional={field: PLAUSIBLE for field in RESOURCE_FIELDS}) | st.dictionaries(
    st.sampled_from([*RESOURCE_FIELDS, "gpus"]), PLAUSIBLE, max_size=4
)
FOCUSED_SPECS = st.fixed_dictionaries(
    {"run": st.just("echo hi") | PLAUSIBLE},
    optional={
        "name": PLAUSIBLE,
        "resources": RESOURCE_DICTS | PLAUSIBLE,
        "envs": ENV_DICTS | PLAUSIBLE,
        "setup": PLAUSIBLE,
        "max_runtime_minutes": PLAUSIBLE,
    },
) | st.dictionaries(st.sampled_from([*TOP_LEVEL_FIELDS, "workdir"]), PLAUSIBLE | RESOURCE_DICTS, max_size=5)


def _validate_or_reject(value: Any) -> TaskSpec | None:
    """Validate; a rejection must be a ValidationError (anything else propagates and fails the test)."""
    try:
        return TaskSpec.model_validate(value)
    except ValidationError as error:
        rejection = error
    assert rejection.errors(), "a ValidationError must say what was wrong"
    return None


@PROPERTY_SETTINGS
@given(JSON_VALUES)
def test_property_given_arbitrary_json_when_validated_then_it_is_accepted_or_a_validation_error(value: Any) -> None:
    spec = _validate_or_reject(value)
    if spec is not None:  # an accepted spec re-validates to itself (normalisation is idempotent)
        assert TaskSpec.model_validate(spec.model_dump()) == spec


@PROPERTY_SETTINGS
@given(FOCUSED_SPECS)
def test_property_given_plausible_field_values_when_validated_then_accepted_or_a_validation_error(
    value: dict[str, Any],
) -> None:
    spec = _validate_or_reject(value)
    if spec is None:
        return
    # Then an accepted spec re-validates to itself, and selection either works or says why not (InvalidSpec)
    assert TaskSpec.model_validate(spec.model_dump()) == spec
    assert spec.run.strip()
    try:
        selection = catalog.get().select(spec.resources, spec.resources.region or "us-east-1")
    except InvalidSpec as error:
        why_not = error
    else:
        assert selection.region in selection.instance.regions
        return
    assert why_not.message
    assert why_not.code == "INVALID_SPEC"


def test_given_the_focused_strategy_examples_then_valid_specs_are_among_them() -> None:
    # Guards the property test above against becoming vacuous: hand-picked members of the strategy's value space
    # are accepted.
    spec = TaskSpec.model_validate(
        {"run": "echo hi", "resources": {"accelerators": "A100:8", "cpus": "8+", "memory": "512MB"}, "envs": {"A": 1}}
    )
    assert spec.resources.accelerators == "A100:8"
    assert catalog.get().select(spec.resources, "us-east-1").instance_type == "p4d.24xlarge"


def test_a_job_request_keeps_the_gpu_name_the_user_typed_through_task_spec() -> None:
    # Given a request using an alias, When it is turned into the stored spec, Then the alias note survives
    from controlplane.core.models import JobRequest

    spec = JobRequest.model_validate(
        {"provider_id": "p", "resources": {"accelerators": "a10:1"}, "run": "x"}
    ).task_spec()
    assert spec.resources.accelerators == "A10G:1"
    assert spec.resources.accelerator is not None
    assert spec.resources.accelerator.requested_as == "a10"
    selection = catalog.get().select(spec.resources, "us-east-1")
    assert selection.notes == ("a10 is sold on AWS as A10G",)


# -- the stored size (the job record is one DynamoDB item) -----------------------------------------------------


def test_a_spec_up_to_the_stored_bound_passes_and_one_byte_more_is_refused_with_a_sentence() -> None:
    from controlplane.core.spec import MAX_SPEC_BYTES, check_spec_size, stored_spec_bytes

    assert MAX_SPEC_BYTES == 256 * 1024
    overhead = stored_spec_bytes(TaskSpec.model_validate({"run": "x"})) - 1
    fits = TaskSpec.model_validate({"run": "x" * (MAX_SPEC_BYTES - overhead)})
    assert stored_spec_bytes(fits) == MAX_SPEC_BYTES
    check_spec_size(fits)
    over = TaskSpec.model_validate({"run": "x" * (MAX_SPEC_BYTES - overhead + 1)})
    with pytest.raises(InvalidSpec) as refused:
        check_spec_size(over)
    assert refused.value.code == "INVALID_SPEC"
    assert f"{MAX_SPEC_BYTES + 1:,} bytes" in refused.value.message
    assert "at most 262,144 bytes" in refused.value.message
    assert "script" in refused.value.message


def test_the_stored_size_counts_utf8_bytes_and_json_escapes_of_every_field() -> None:
    from controlplane.core.spec import stored_spec_bytes

    base = stored_spec_bytes(TaskSpec.model_validate({"run": "x"}))
    assert stored_spec_bytes(TaskSpec.model_validate({"run": "é"})) == base + 1  # 2 UTF-8 bytes
    assert stored_spec_bytes(TaskSpec.model_validate({"run": "\x01"})) == base + 5  # \u0001
    envs = TaskSpec.model_validate({"run": "x", "envs": {"A": "y" * 1000}})
    assert stored_spec_bytes(envs) > base + 1000
