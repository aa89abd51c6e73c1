"""The benchmarks' table, verdicts, the emulator request-log parsing, -X importtime parsing and the assets' sizes (no
emulator)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

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
