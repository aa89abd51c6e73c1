"""`make bench` / `python -m bench`: the eight benchmarks in one run, one table (measured vs target, pass or miss) and
bench/results/latest.json (date, machine, figures, details). This machine is shared and noisy: compare figures
within one run (ratios), not across runs.

    python -m bench                       # all eight, full size (writes bench/results/latest.json)
    python -m bench --quick               # all eight, small sizes (a smoke run; writes bench/results/partial.json)
    python -m bench --only launch,cost    # a subset (also partial.json)

Sections: coldstart (3), relay (2: throughput on its own emulator, latency on the embedded control plane), launch
(1), cost (4), scale (5), artifacts (6: code in, results out, on the embedded control plane), recovery (7: spot
interruption → the next attempt's first line, on the embedded control plane), fleet (8: 200 jobs at once followed by
relay shards over real sshd). Nothing here talks to real AWS:
local/guard.py refuses anything but loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, Figure, Results, notes, table

SECTIONS = ("coldstart", "relay", "launch", "cost", "scale", "artifacts", "recovery", "fleet")
FULL = {
    "launch_jobs": 20,
    "bootstraps": 2,
    "megabytes": 200,
    "latency_seconds": 10.0,
    "first_line_jobs": 20,
    "repeats": 3,
    # each phase of the cost job: a log compacts every 18–30 s (drawn), and a 30 s window held one or two of them,
    # which moved the per-hour figure by a tenth between runs; 90 s holds three to five
    "cost_seconds": 90.0,
    "active": 1000,
    "total": 10_000,
    "transfer_megabytes": 200,
    "workdir_megabytes": 100,
    "transfer_rounds": 3,
    "workdir_jobs": 5,
    "recovery_samples": 3,
    "fleet_jobs": 200,
    "fleet_seconds": 180.0,
}
QUICK = FULL | {
    "launch_jobs": 4,
    "bootstraps": 1,
    "megabytes": 24,
    "latency_seconds": 5.0,
    "first_line_jobs": 4,
    "repeats": 1,
    "cost_seconds": 10.0,
    "active": 120,
    "total": 600,
    "transfer_megabytes": 24,
    "workdir_megabytes": 10,
    "transfer_rounds": 2,
    "workdir_jobs": 3,
    "recovery_samples": 2,
    "fleet_jobs": 30,
    "fleet_seconds": 20.0,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the same code paths")
    parser.add_argument("--output", type=Path, help="where to write the results (default: see above)")
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    full_size = all(getattr(args, k) == v for k, v in FULL.items())
    full = not args.quick and set(args.sections) == set(SECTIONS) and full_size
    args.output = args.output or RESULTS_DIR / ("latest.json" if full else "partial.json")
    return args


def _section(results: Results, name: str, work: Callable[[], tuple[list[Figure], dict[str, Any]]]) -> None:
    print(f"[bench] {name} …", flush=True)
    started = time.monotonic()
    saved = dict(os.environ)
    try:
        figures, details = work()
        results.figures += figures
        results.details[name] = details | {"seconds": round(time.monotonic() - started, 1)}
    except Exception as error:  # noqa: BLE001 - one failed benchmark must not hide the others' figures
        traceback.print_exc()
        results.errors[name] = f"{type(error).__name__}: {error}"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from bench import scale

        scale._reset_process()
    print(f"[bench] {name} done in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from local import guard

    guard.check_environment()
    guard.install_network_guard()
    started = time.monotonic()
    results = Results(dt.datetime.now(dt.UTC), {k: getattr(args, k) for k in FULL} | {"sections": args.sections})
    if "coldstart" in args.sections:
        from bench import coldstart

        _section(results, "coldstart", lambda: coldstart.run(args.repeats))
    if "relay" in args.sections:
        from bench import relay

        _section(results, "relay_throughput", lambda: relay.throughput(args.megabytes))
    if {"launch", "relay", "cost", "artifacts", "recovery"} & set(args.sections):
        _plane_sections(results, args)
    if "scale" in args.sections:
        from bench import scale

        _section(results, "scale", lambda: scale.run(args.active, args.total))
    if "fleet" in args.sections:
        from bench import fleet

        _section(results, "fleet", lambda: fleet.run(args.fleet_jobs, args.fleet_seconds))
    order = {name: i for i, name in enumerate(["1", "2", "3", "4", "5", "6", "7", "8"])}
    results.figures.sort(key=lambda f: order.get(f.section[:1], 9))
    wall = time.monotonic() - started
    print()
    print(table(results.figures))
    print("\nnotes:")
    print(notes(results.figures))
    for name, error in results.errors.items():
        print(f"ERROR in {name}: {error}")
    misses = [f for f in results.figures if f.verdict == "MISS"]
    print(f"\n{len(results.figures)} figures, {len(misses)} targets missed; wall time {wall / 60:.1f} min")
    results.write(args.output, wall)
    print(f"results: {args.output.relative_to(Path.cwd()) if args.output.is_relative_to(Path.cwd()) else args.output}")
    return 1 if results.errors else 0


def _plane_sections(results: Results, args: argparse.Namespace) -> None:
    """launch, relay latency, cost, artifacts and recovery share one embedded control plane (one emulator, one
    instance simulator)."""
    from bench import plane

    saved = dict(os.environ)
    print("[bench] starting the embedded control plane …", flush=True)
    session = plane.start(relay_budget_seconds=_deployed_relay_budget())
    try:
        session.recorder.start()
        provider_id = session.add_provider()
        session.warm_up(provider_id)
        # cost first: its reconciler sweep then sees one provider-region with only this job's history in it
        if "cost" in args.sections:
            from bench import cost

            _section(results, "cost", lambda: cost.run(session, provider_id, args.cost_seconds))
        if "relay" in args.sections:
            from bench import relay

            _section(results, "relay_latency", lambda: relay.latency(session, provider_id, args.latency_seconds))
            _section(results, "first_line", lambda: relay.first_line(session, provider_id, args.first_line_jobs))
        if "artifacts" in args.sections:
            from bench import artifacts

            _section(
                results,
                "artifacts",
                lambda: artifacts.run(
                    session,
                    provider_id,
                    args.transfer_megabytes,
                    args.workdir_megabytes,
                    args.transfer_rounds,
                    args.workdir_jobs,
                ),
            )
        if "recovery" in args.sections:
            from bench import recovery

            _section(results, "recovery", lambda: recovery.run(session, provider_id, args.recovery_samples))
        if "launch" in args.sections:
            from bench import launch

            _section(results, "launch", lambda: launch.run(session, provider_id, args.launch_jobs, args.bootstraps))
    finally:
        session.stop()
        os.environ.clear()
        os.environ.update(saved)


def _deployed_relay_budget() -> float:
    from bench import prices

    return prices.deployment().relay_budget_seconds


if __name__ == "__main__":
    sys.exit(main())
