"""The benchmarks' table, verdicts, the emulator request-log parsing, -X importtime parsing, the assets' sizes and
the code-in-results-out section's rows (no emulator)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from bench import artifacts
from bench.awsops import OBSERVER_AGENT, parse_entry, parse_stream
from bench.coldstart import asset_excluded, importtime_by_package, layer_excluded, zipped_size
from bench.launch import _untagged_run
from bench.report import Figure, Results, format_target, format_value, notes, table


def test_verdicts_compare_against_the_target_in_its_direction() -> None:
    assert Figure("1", "ratio", 1.2, "×", ("<=", 1.3)).verdict == "pass"
    assert Figure("1", "ratio", 1.31, "×", ("<=", 1.3)).verdict == "MISS"
    assert Figure("2", "rate", 20.0, "MB/s", (">=", 20.0)).verdict == "pass"
    assert Figure("2", "rate", 19.9, "MB/s", (">=", 20.0)).verdict == "MISS"
    assert Figure("3", "size", None, "MB", ("<=", 15.0)).verdict == "n/a"
    assert Figure("3", "size", 28.0, "MB").verdict == ""


def test_values_are_formatted_by_unit_and_magnitude() -> None:
    assert format_value(0.00024, "$") == "$0.00024"
    assert format_value(0.0204, "$") == "$0.0204"
    assert format_value(10.956, "×") == "10.96×"
    assert format_value(6.0, "calls") == "6 calls"
    assert format_value(856.2, "ms") == "856 ms"
    assert format_value(24.51, "MB/s") == "24.5 MB/s"
    assert format_value(0.3271, "s") == "0.327 s"
    assert format_value(None, "s") == "n/a"
    assert format_target(("<=", 1.3), "×") == "≤ 1.30×"
    assert format_target((">=", 20.0), "MB/s") == "≥ 20.0 MB/s"


def test_the_table_groups_rows_by_section_and_aligns_columns() -> None:
    figures = [
        Figure("1 launch", "chain", 800.0, "ms"),
        Figure("1 launch", "chain / direct", 10.0, "×", ("<=", 1.3)),
        Figure("2 relay", "p50", 0.3, "s", ("<=", 1.0)),
    ]
    lines = table(figures).splitlines()
    assert lines[0].split() == ["figure", "measured", "target"]
    assert set(lines[1]) == {"-"}
    assert lines[2].startswith("1 launch")
    assert lines[3].startswith(" ")
    assert lines[3].endswith("MISS")
    assert lines[4].endswith("pass")
    assert len({line.index("800 ms") for line in lines if "800 ms" in line}) == 1


def test_results_are_written_with_date_machine_and_verdicts(tmp_path: Path) -> None:
    import datetime as dt

    results = Results(dt.datetime(2026, 11, 24, tzinfo=dt.UTC), {"quick": True})
    results.figures.append(Figure("2 relay", "p50", 0.3, "s", ("<=", 1.0)))
    results.write(tmp_path / "latest.json", 12.3)
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["date"] == "2026-11-24T00:00:00+00:00"
    assert document["wall_seconds"] == 12.3
    assert document["machine"]["cpus"] >= 1
    assert document["figures"][0]["verdict"] == "pass"


def _entry(headers: dict[str, str], body: str, url: str = "http://127.0.0.1:5000/") -> dict[str, object]:
    return {
        "headers": headers,
        "method": "POST",
        "url": url,
        "body": base64.b64encode(body.encode()).decode(),
        "body_encoded": True,
    }


def test_recorded_requests_name_their_service_region_key_and_operation() -> None:
    scope = "Credential=AKIAEXAMPLEKEY000001/20261124/us-west-2/{}/aws4_request, SignedHeaders=host"
    json_call = parse_entry(
        _entry(
            {
                "Authorization": "AWS4-HMAC-SHA256 " + scope.format("dynamodb"),
                "X-Amz-Target": "DynamoDB_20120810.Query",
            },
            '{"TableName": "t"}',
        )
    )
    assert (json_call.service, json_call.region, json_call.operation) == ("dynamodb", "us-west-2", "Query")
    assert json_call.key_id == "AKIAEXAMPLEKEY000001"
    assert json_call.json_body() == {"TableName": "t"}
    query_call = parse_entry(
        _entry({"authorization": "AWS4-HMAC-SHA256 " + scope.format("ec2")}, "Action=RunInstances&Version=2016-11-15")
    )
    assert query_call.name == "ec2:RunInstances"
    invoke = parse_entry(
        _entry(
            {"Authorization": "AWS4-HMAC-SHA256 " + scope.format("lambda"), "User-Agent": f"x {OBSERVER_AGENT}"},
            "{}",
            "http://localhost:5000/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Aec2jobs-relay/invocations",
        )
    )
    assert (invoke.operation, invoke.function, invoke.by_bench) == ("Invoke", "ec2jobs-relay", True)


def test_the_request_log_is_read_entry_by_entry_even_when_two_share_a_line() -> None:
    text = '{"a": 1}{"b": 2}\n\n{"c": 3}\n{"d": '
    entries, used = parse_stream(text)
    assert entries == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert text[used:].strip() == '{"d":'


def test_the_replayed_run_instances_is_left_alone_by_the_simulator_and_gets_its_own_token() -> None:
    body = (
        "Action=RunInstances&ClientToken=ec2jobs-abc&TagSpecification.1.Tag.1.Key=ec2jobs%3Amanaged-by"
        "&TagSpecification.1.Tag.1.Value=ec2jobs&TagSpecification.1.Tag.2.Key=ec2jobs%3Ajob-id"
        "&TagSpecification.1.Tag.2.Value=job-1"
    )
    changed = _untagged_run(body, "d1")
    assert "TagSpecification.1.Tag.1.Value=ec2jobs-bench" in changed
    assert "TagSpecification.1.Tag.2.Value=job-1" in changed
    assert "ClientToken=ec2jobs-abcd1" in changed


def test_importtime_output_is_summed_per_top_level_package() -> None:
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      1000 |       1000 |     botocore.compat",
            "import time:      3000 |       4000 |   botocore",
            "import time:       500 |        500 |   pydantic",
            "import time:       200 |       5000 | controlplane.handlers.api",
        ]
    )
    assert importtime_by_package(stderr, top=2) == {"botocore": 4.0, "pydantic": 0.5}


def test_sizes_count_what_each_asset_ships_the_layers_bytecode_but_not_the_code_assets(tmp_path: Path) -> None:
    for root in (tmp_path / "asset", tmp_path / "layer"):
        (root / "pkg" / "__pycache__").mkdir(parents=True)
        (root / "pkg" / "mod.py").write_text("x = 1\n" * 100)
        (root / "pkg" / "__pycache__" / "mod.cpython-312.pyc").write_bytes(bytes(range(256)) * 8)
        (root / ".stamp").write_text("fingerprint\n")
    asset = zipped_size(tmp_path / "asset", asset_excluded)
    layer = zipped_size(tmp_path / "layer", layer_excluded)
    assert asset[1] == 600 + len("fingerprint\n")  # CDK's asset for lambdas/ leaves bytecode out
    assert asset[2] == 0
    assert layer[1] == 600 + 2048  # the layer's bytecode ships; its stamp does not
    assert 0 < layer[2] < layer[0]


def test_notes_list_each_annotated_figure_once() -> None:
    figures = [Figure("1 launch", "chain", 1.0, "ms", note="20 jobs"), Figure("2 relay", "p50", 0.3, "s")]
    assert notes(figures) == "  [1] chain: 20 jobs"


def _sample(seconds: float, on_instance: float, raced: bool, workdir: bool = False) -> dict[str, object]:
    sample: dict[str, object] = {"seconds": seconds, "running_to_line_seconds": on_instance, "raced": raced}
    if workdir:
        sample |= {"pack_seconds": 1.0, "upload_seconds": 0.5, "archive_bytes": 100_000_000, "parts": 12}
    return sample


def test_first_line_medians_leave_out_the_local_race_only_when_both_kinds_have_a_clean_sample() -> None:
    runs = {
        "plain": [_sample(2.0, 1.0, False), _sample(12.0, 1.0, True), _sample(12.5, 1.2, True)],
        "workdir": [_sample(6.0, 1.6, False, True), _sample(16.0, 1.8, True, True), _sample(5.0, 1.6, False, True)],
    }
    summary = artifacts.first_line_summary(runs)
    assert summary["over"] == "samples without the race"
    assert (summary["no_workdir_seconds"], summary["workdir_seconds"]) == (2.0, 5.5)
    assert summary["raced"] == {"plain": 2, "workdir": 1}
    # pack 1.0 + upload 0.5 + (1.6 - 1.0) on the instance, from all samples: the race comes before RUNNING
    assert summary["workdir_share_seconds"] == pytest.approx(2.1)
    runs["plain"] = [_sample(12.0, 1.0, True), _sample(11.0, 1.0, True), _sample(13.0, 1.0, True)]
    summary = artifacts.first_line_summary(runs)
    assert summary["over"] == "all samples"
    assert (summary["no_workdir_seconds"], summary["workdir_seconds"]) == (12.0, 6.0)


def test_a_failed_relay_invocation_is_a_retry_and_other_failures_are_not() -> None:
    def scheduled(step: str) -> dict[str, object]:
        resource = f"arn:aws:lambda:us-east-1:123456789012:function:ec2jobs-{step}"
        return {"type": "LambdaFunctionScheduled", "lambdaFunctionScheduledEventDetails": {"resource": resource}}

    failed = {"type": "LambdaFunctionFailed"}
    assert artifacts.relay_retried([scheduled("launch"), scheduled("relay"), failed, scheduled("relay")])
    assert not artifacts.relay_retried([scheduled("launch"), failed, scheduled("launch"), scheduled("relay")])


def test_the_section_rows_put_the_targets_on_the_ratios() -> None:
    names = [n for group in artifacts.METHODS.values() for n in group]
    moved = {
        "median_mb_per_second": dict.fromkeys(names, 100.0) | {"client_upload_boto3": 200.0},
        "rounds": 3,
        "api_upload": {"parts": 24, "part_size": 8 * 1024 * 1024},
        "tool_part_bytes": 64 * 1024 * 1024,
        "tool_multipart": True,
    }
    started = {
        "samples": {"plain": [{}], "workdir": [{}]},
        "raced": {"plain": 0, "workdir": 0},
        "over": "all samples",
        "no_workdir_seconds": 2.0,
        "workdir_seconds": 5.5,
        "pack_seconds": 1.0,
        "upload_seconds": 0.5,
        "running_to_line_seconds": {"plain": 1.0, "workdir": 1.6},
        "workdir_share_seconds": 2.1,
        "archive_bytes": 100_000_000,
        "upload_parts": 12,
    }
    rows = artifacts.figures(moved, started, 200, 100)
    targeted = [row for row in rows if row.target is not None]
    assert [row.unit for row in targeted] == ["×"] * 5
    assert all(row.target == (">=", 0.8) for row in targeted)
    assert targeted[0].value == 0.5  # 100 MB/s against boto3's 200
    assert targeted[0].verdict == "MISS"
    assert [row.verdict for row in targeted[1:]] == ["pass"] * 4
    assert rows[-2].value == pytest.approx(3.5)  # the difference: informational
    assert rows[-2].target is None
    assert "not covered: the network" in rows[0].note
