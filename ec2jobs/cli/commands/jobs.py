"""`ec2jobs submit|jobs|status|logs|cancel`: a team's jobs (submit with `--env` and `--secret`, uploading a local
workdir and file_mounts first; follow status and output)."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ec2jobs.cli import output
from ec2jobs.cli.args import Parents, positive
from ec2jobs.cli.config import client_for
from ec2jobs.cli.costs import cost_cell, cost_fields, hourly, job_cost, market, market_detail
from ec2jobs.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from ec2jobs.cli.inputs import apply_secrets, local_inputs, parse_secret_options, upload_inputs
from ec2jobs.cli.output import dash, duration, number, price, timestamp
from ec2jobs.cli.tasks import apply_envs, parse_env_options, read_task_file
from ec2jobs.client import TERMINAL_STATUSES, ApiError, Client, JsonObject, log_final, log_tail_missing

_DETAIL_PREFIXES = ("not running yet", "recovering", "waiting for capacity")
JOB_STATUSES = (
    "PENDING",
    "LAUNCHING",
    "WAITING_CAPACITY",
    "PROVISIONING",
    "RUNNING",
    "RECOVERING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
# Between attempts (job_recovery, docs/recovery.md): not running and not ended; status_detail says why and what next.
BETWEEN_ATTEMPTS = frozenset({"RECOVERING", "WAITING_CAPACITY"})
# States whose output the log stream may still carry: the job runs, or its ended attempt's tail is being drained.
STREAMING = frozenset({"RUNNING", "RECOVERING"})
LOG_GRACE_SECONDS = 60.0  # after the job ended, how long to wait for the rest of its log before giving up
MAX_PAGE = 100  # the API's largest page of jobs

_sleep: Callable[[float], None] = time.sleep  # tests replace it (e.g. to simulate Ctrl-C while following)


def _pick_provider(client: Client, flag: str | None, from_file: Any) -> str:
    if flag:
        return flag
    if from_file:
        return str(from_file)
    providers = client.list_providers().get("providers") or []
    if not providers:
        raise UsageError("no provider to run on: add one with `ec2jobs providers add`")
    if len(providers) > 1:
        names = ", ".join(f"{p.get('provider_id')} ({p.get('name')})" for p in providers)
        raise UsageError(f"this team has several providers: pass --provider ID (one of: {names})")
    return str(providers[0]["provider_id"])


def cmd_submit(args: argparse.Namespace) -> int:
    if args.json and args.follow:
        raise UsageError("--json and --follow cannot be combined")
    spec = read_task_file(Path(args.file))
    spec = apply_envs(spec, parse_env_options(args.env or []), args.file)
    spec = apply_secrets(spec, parse_secret_options(args.secret or []), args.file)
    if args.resume_from:
        spec["resume_from"] = args.resume_from
    local = local_inputs(spec, Path.cwd(), args.file)  # refuses S3 mounts and missing paths before any request
    from_file = spec.pop("provider_id", None)
    client = client_for(args)
    provider_id = _pick_provider(client, args.provider, from_file)
    # While following (or printing JSON), stdout carries the job's output (or the JSON) only: our lines go to stderr.
    say = output.err if args.follow or args.json else output.out
    spec = upload_inputs(client, spec, local, say)
    job = client.submit_job(provider_id, spec, args.idempotency_key)
    if args.json:
        output.print_json(job)
        return EXIT_OK
    job_id = str(job.get("job_id"))
    say(f"submitted job {job_id} ({job.get('status')})")
    say(f"  instance type: {dash(job.get('instance_type'))} in {dash(job.get('region'))}, $/h {hourly(job)}")
    for note in job.get("notes") or []:
        say(f"  note: {note}")
    if not args.follow:
        output.out(f"follow it with: ec2jobs logs {job_id} --follow   (status: ec2jobs status {job_id})")
        return EXIT_OK
    return _follow_job(client, job_id, args.poll)


def _attempt(job: Mapping[str, Any]) -> int:
    """The job's current attempt (1 for a job from before attempts existed)."""
    value = job.get("attempt")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _status_line(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    details = []
    if _attempt(job) > 1:
        details.append(f"attempt {_attempt(job)}")
    if job.get("instance_id"):
        details.append(f"instance {job['instance_id']}")
        if job.get("instance_type"):
            details.append(str(job["instance_type"]))
    if job.get("instance_state") and status != "RUNNING":
        details.append(f"EC2 state {job['instance_state']}")
    suffix = f" ({', '.join(details)})" if details else ""
    if status in BETWEEN_ATTEMPTS and job.get("status_detail"):
        suffix += f": {output.one_line(str(job['status_detail']))}"
    return f"[{time.strftime('%H:%M:%S')}] job {job.get('job_id')}: {status}{suffix}"


def _final_line(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    line = f"job {job.get('job_id')} {status}"
    parts = []
    if job.get("failure_reason"):
        parts.append(str(job["failure_reason"]))
    if job.get("exit_code") is not None:
        parts.append(f"exit code {job['exit_code']}")
    if parts:
        line += ": " + ", ".join(parts)
    if job.get("failure_message"):
        line += f" - {output.one_line(str(job['failure_message']))}"
    attempts = len(_attempts(job))
    if attempts > 1:
        line += f" after {attempts} attempts"
    cost = job_cost(job, output.now())
    if status in TERMINAL_STATUSES and cost.seconds is not None:
        if cost.amount is not None:
            spent = f"about ${price(cost.amount)}"
        elif cost.ceiling is not None:
            spent = f"at most ${price(cost.ceiling)} on spot"
        else:
            spent = "cost n/a"
        line += f" (billed {duration(cost.seconds)}, {spent})"
    return line


def _tail_notice(job: Mapping[str, Any] | None) -> str:
    """One line for a log that ended without being whole (final, not complete)."""
    job = job or {}
    ended = "/".join(str(part) for part in (job.get("status"), job.get("failure_reason")) if part)
    return (
        "ec2jobs: the log ended without the instance's drain confirmation: output written in the job's last "
        "moments may be missing" + (f" (job {ended})" if ended else "")
    )


def _job_or_none(client: Client, job_id: str) -> JsonObject | None:
    """The job, for the notice's detail; without it the notice is still printed."""
    try:
        return client.get_job(job_id)
    except ApiError:
        return None


class _Transient:
    """Retry a call through short outages while following (connection errors, 429, 5xx)."""

    def __init__(self, poll: float, attempts: int = 6) -> None:
        self.poll = poll
        self.attempts = attempts

    def __call__(self, call: Callable[[], JsonObject]) -> JsonObject:
        for attempt in range(self.attempts):
            try:
                return call()
            except ApiError as error:
                retryable = error.status == 0 or error.status == 429 or error.status >= 500
                if not retryable or attempt == self.attempts - 1:
                    raise
                _sleep(min(max(self.poll, 0.5) * 2**attempt, 10.0))
        raise AssertionError("unreachable")


def _follow_job(client: Client, job_id: str, poll: float) -> int:
    """Status changes (stderr) until the job runs, its output as it arrives (stdout), then the final status line."""
    retry = _Transient(poll)
    last_seen: tuple[Any, Any, int] | None = None
    cursor: str | None = None
    ended_at: float | None = None
    last_char = "\n"
    tail_missing = False  # the log ended (final) without being whole (complete)
    try:
        while True:
            job = retry(lambda: client.get_job(job_id))
            status = job.get("status")
            terminal = status in TERMINAL_STATUSES
            seen = (status, job.get("instance_id"), _attempt(job))
            if not terminal and seen != last_seen:
                output.err(_status_line(job))
                last_seen = seen
            final = False
            if status in STREAMING or terminal or cursor is not None:
                while True:
                    page = retry(functools.partial(client.get_logs, job_id, after=cursor))
                    text = str(page.get("text") or "")
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        last_char = text[-1]
                    if page.get("next_cursor") is not None:
                        cursor = str(page["next_cursor"])
                    final, tail_missing = log_final(page), log_tail_missing(page)
                    if final or not text:
                        break
            if terminal:
                if final:
                    break
                ended_at = ended_at if ended_at is not None else time.monotonic()
                if time.monotonic() - ended_at > LOG_GRACE_SECONDS:
                    output.err(f"the rest of the log did not arrive (see `ec2jobs logs {job_id}` later)")
                    break
            _sleep(poll)
    except KeyboardInterrupt:
        if last_char != "\n":
            output.err("")
        output.err(f"stopped following job {job_id}; it keeps running (`ec2jobs cancel {job_id}` cancels it)")
        return EXIT_INTERRUPTED
    if last_char != "\n":
        output.err("")  # the output did not end with a newline: start the status line on a line of its own
    if tail_missing:
        output.err(_tail_notice(job))
    output.err(_final_line(job))
    return EXIT_OK if job.get("status") == "SUCCEEDED" else EXIT_FAILED


def _collect_jobs(client: Client, status: str | None, limit: int) -> JsonObject:
    jobs: list[Any] = []
    cursor: str | None = None
    while True:
        page = client.list_jobs(status=status, limit=min(limit - len(jobs), MAX_PAGE), cursor=cursor)
        jobs.extend(page.get("jobs") or [])
        cursor = page.get("next_cursor")
        if not cursor or len(jobs) >= limit:
            return {"jobs": jobs[:limit], "next_cursor": cursor}


def cmd_jobs(args: argparse.Namespace) -> int:
    body = _collect_jobs(client_for(args), args.status, args.limit)
    if args.json:
        output.print_json(body)
        return EXIT_OK
    jobs = body["jobs"]
    if not jobs:
        output.out("no jobs" + (f" with status {args.status}" if args.status else ""))
        return EXIT_OK
    now = output.now()
    costs = [cost_cell(job_cost(j, now)) for j in jobs]
    output.table(
        ["JOB ID", "NAME", "STATUS", "INSTANCE TYPE", "MARKET", "$/H", "COST", "CREATED"],
        [
            [
                j.get("job_id"),
                dash(j.get("name")),
                j.get("status"),
                dash(j.get("instance_type")),
                market(j),
                price(j.get("hourly_price")),
                cost,
                timestamp(j.get("created_at")),
            ]
            for j, cost in zip(jobs, costs, strict=True)
        ],
    )
    if any(cost[:1] in {"~", "<"} for cost in costs):
        output.err("(COST: ~ so far, the job still runs; <= at most, on spot: no spot price is recorded)")
    if body["next_cursor"]:
        output.err(f"(the newest {len(jobs)} shown; pass --limit for more)")
    return EXIT_OK


def _attempts(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The job's attempts as the API lists them (the current one last); empty from an API before attempts."""
    value = job.get("attempts")
    return [a for a in value if isinstance(a, Mapping)] if isinstance(value, list) else []


def _most_attempts(job: Mapping[str, Any]) -> int | None:
    """1 + max_restarts + max_restarts_on_errors of the job's job_recovery; None without one."""
    spec = job.get("spec")
    policy = spec.get("job_recovery") if isinstance(spec, Mapping) else None
    if not isinstance(policy, Mapping):
        return None
    counts = [policy.get("max_restarts"), policy.get("max_restarts_on_errors")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        return None
    return 1 + sum(int(n) for n in counts if n is not None)


def _detail(job: Mapping[str, Any]) -> str | None:
    """Why a job that has not ended is where it is (e.g. waiting for capacity until when), if the API says."""
    detail = job.get("status_detail")
    return str(detail) if detail and job.get("status") not in TERMINAL_STATUSES else None


def _attempt_fields(job: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The detail view's attempt number (with its bound under job_recovery), why the job is between attempts, and
    what the attempts that ended cost while the job goes on."""
    pairs: list[tuple[str, Any]] = []
    most = _most_attempts(job)
    if most is not None:
        pairs.append(("attempt", f"{_attempt(job)} of at most {most} (job_recovery)"))
    elif _attempt(job) > 1:
        pairs.append(("attempt", _attempt(job)))
    if job.get("status") in TERMINAL_STATUSES:
        return pairs
    if _detail(job):
        pairs.append(("status detail", output.one_line(str(job["status_detail"]))))
    ended = [a for a in _attempts(job) if a.get("ended_at")]
    if ended:
        seconds = sum(number(a.get("billed_seconds")) or 0.0 for a in ended)
        costs = [number(a.get("cost_estimate")) for a in ended]
        known = [c for c in costs if c is not None]
        spent = f"${price(sum(known))}" if known else "cost n/a"
        if known and len(known) < len(costs):
            spent += " (spot attempts not included: no spot price is recorded)"
        elif not known:
            spent += " (no spot price is recorded)"
        pairs.append(("earlier attempts", f"{len(ended)} ended: billed {duration(seconds)}, {spent}"))
    return pairs


def _attempt_cost(attempt: Mapping[str, Any], job: Mapping[str, Any], now: dt.datetime) -> str:
    """An attempt's COST: as recorded; on spot at most its billed time at the on-demand price; the current
    attempt's cost so far while it runs."""
    recorded = number(attempt.get("cost_estimate"))
    if recorded is not None:
        return price(recorded)
    seconds, ceiling = number(attempt.get("billed_seconds")), number(job.get("on_demand_price"))
    if seconds is not None:
        return f"<={price(round(ceiling * seconds / 3600, 4))}" if ceiling is not None else "n/a"
    current = attempt.get("attempt") == _attempt(job) and not attempt.get("ended_at")
    if current and attempt.get("launched_at") and job.get("status") not in TERMINAL_STATUSES:
        return cost_cell(job_cost(job, now))
    return "-"


def _attempt_reason(attempt: Mapping[str, Any]) -> str:
    reason = dash(attempt.get("end_reason"))
    code = attempt.get("exit_code")
    return f"{reason} (exit {code})" if code not in (None, 0) else reason


def _attempts_table(job: Mapping[str, Any], now: dt.datetime) -> None:
    """Every attempt of a job that relaunched: where it ran, how it ended, what it cost."""
    output.rich_table(
        "attempts",
        ["ATTEMPT", "INSTANCE", "ZONE", "MARKET", "ENDED", "REASON", "COST"],
        [
            [
                a.get("attempt"),
                dash(a.get("instance_id")),
                a.get("availability_zone") or a.get("region"),
                dash(a.get("market")),
                timestamp(a.get("ended_at")),
                _attempt_reason(a),
                _attempt_cost(a, job, now),
            ]
            for a in _attempts(job)
        ],
    )


def cmd_status(args: argparse.Namespace) -> int:
    job = client_for(args).get_job(args.job_id)
    if args.json:
        output.print_json(job)
        return EXIT_OK
    now = output.now()
    pairs: list[tuple[str, Any]] = [
        ("job id", job.get("job_id")),
        ("name", job.get("name")),
        ("status", job.get("status")),
        *_attempt_fields(job),
    ]
    if job.get("status") == "FAILED" or job.get("failure_reason"):
        pairs += [("failure reason", job.get("failure_reason")), ("failure message", job.get("failure_message"))]
    pairs += [
        ("exit code", job.get("exit_code")),
        ("provider", job.get("provider_id")),
        ("region", job.get("region")),
        ("instance type", job.get("instance_type")),
        ("market", market_detail(job)),
        ("$/h", hourly(job)),
        *cost_fields(job, now),
        ("instance id", job.get("instance_id")),
        ("instance state", job.get("instance_state")),
        ("zone", job.get("availability_zone")),
        ("created", timestamp(job.get("created_at"))),
        ("launched", timestamp(job.get("launched_at"))),
        ("started", timestamp(job.get("started_at"))),
        ("ended", timestamp(job.get("ended_at"))),
    ]
    # the API's note saying the same as the detail, prefixed by state (core/models.py)
    repeated = {f"{prefix}: {_detail(job)}" for prefix in _DETAIL_PREFIXES} if _detail(job) else set()
    pairs += [("note", note) for note in job.get("notes") or [] if note not in repeated]
    output.fields(pairs)
    if len(_attempts(job)) > 1:
        _attempts_table(job, now)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    client = client_for(args)
    last_char = "\n"
    if args.follow:
        stream = client.follow_logs(args.job_id, poll=args.poll, sleep=lambda seconds: _sleep(seconds))
        try:
            while True:
                try:
                    text = next(stream)
                except StopIteration as end:
                    last: JsonObject = end.value
                    break
                sys.stdout.write(text)
                sys.stdout.flush()
                last_char = text[-1]
        except KeyboardInterrupt:
            output.err(f"\nstopped following the log of job {args.job_id}")
            return EXIT_INTERRUPTED
    else:
        cursor: str | None = None
        while True:
            last = client.get_logs(args.job_id, after=cursor)
            text = str(last.get("text") or "")
            sys.stdout.write(text)
            sys.stdout.flush()
            last_char = text[-1] if text else last_char
            if last.get("next_cursor") is not None:
                cursor = str(last["next_cursor"])
            if log_final(last) or not text:
                break
    if log_tail_missing(last):
        if last_char != "\n":
            output.err("")  # the notice on a line of its own
        output.err(_tail_notice(_job_or_none(client, args.job_id)))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    body = client_for(args).cancel_job(args.job_id)
    output.out(f"cancel requested for job {args.job_id}" + (f" ({body['status']})" if body.get("status") else ""))
    return EXIT_OK


def register(commands: Any, parents: Parents) -> None:
    connection, as_json, poll = parents.connection, parents.as_json, parents.poll
    submit = commands.add_parser("submit", parents=[connection, as_json, poll], help="submit a task YAML")
    submit.add_argument("file", metavar="TASK_YAML")
    submit.add_argument("--provider", metavar="ID", help="else the YAML's provider_id, else the team's only provider")
    submit.add_argument(
        "--env",
        action="append",
        metavar="NAME[=VALUE]",
        help="set an env of the task; NAME alone takes its value from your environment (repeatable; fills an env "
        "the YAML leaves without a value)",
    )
    submit.add_argument(
        "--secret",
        action="append",
        metavar="NAME[=VALUE]",
        help="a secret of the task (sealed, never shown); NAME alone takes its value from your environment "
        "(repeatable; fills a secret the YAML declares as NAME: null)",
    )
    submit.add_argument(
        "--resume-from", metavar="JOB", help="restore this earlier job's last checkpoints before setup runs"
    )
    submit.add_argument("--follow", "-f", action="store_true", help="show status changes and logs until it ends")
    submit.add_argument("--idempotency-key", metavar="KEY", help="a retry with the same key never makes a second job")
    submit.set_defaults(func=cmd_submit)

    jobs = commands.add_parser("jobs", parents=[connection, as_json], help="list jobs, newest first")
    jobs.add_argument("--status", choices=JOB_STATUSES, type=str.upper)
    jobs.add_argument("--limit", type=positive, default=20, help="at most this many (default 20)")
    jobs.set_defaults(func=cmd_jobs)

    status = commands.add_parser("status", parents=[connection, as_json], help="one job")
    status.add_argument("job_id", metavar="JOB")
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", parents=[connection, poll], help="a job's output")
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=cmd_logs)

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(func=cmd_cancel)
