"""`make demo`: a real job end to end on the embedded control plane.

Starts the local control plane (emulated AWS + instance sandboxes + the local API), adds a provider with emulated
credentials (an IAM user holding exactly the seed policy), submits a GPU task (A10G:1) whose run prints numbered
lines for about 20 seconds, shows each stage and streams the log live, then checks the job SUCCEEDED, every line
arrived and the instance was terminated; prints a summary, stops everything, and exits 0 only if all of that held.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ec2jobs.client import ApiError, Client
from local import runtime

REPO = Path(__file__).resolve().parent.parent
LINES = 20
TASK = {
    "name": "demo-finetune",
    "resources": {"accelerators": "A10G:1", "disk_size": 100},
    "envs": {"EPOCHS": str(LINES)},
    "setup": 'echo "setup: preparing the environment on $(hostname)"',
    "run": (
        'for i in $(seq 1 "$EPOCHS"); do\n'
        '  echo "epoch $i/$EPOCHS  loss=$(awk -v i=$i \'BEGIN{printf "%.4f", 2.0/i}\')"\n'
        "  sleep 1\n"
        "done\n"
        'echo "training complete"'
    ),
    "max_runtime_minutes": 10,
}


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"==> {message}", flush=True)


def main() -> int:
    started = time.monotonic()
    say("starting the embedded control plane (emulated AWS on loopback, instance sandboxes, local API)")
    plane = runtime.start(workdir=REPO / ".ec2jobs" / "demo", team_id="demo")
    try:
        return run(plane, started)
    except ApiError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        say("stopping everything the demo started")
        plane.stop()


def run(plane: runtime.LocalControlPlane, started: float) -> int:
    print(f"    API {plane.api_url}   AWS endpoint {plane.endpoint}   team {plane.team_id}")
    client = Client(plane.api_url, plane.token)
    key_id, secret = runtime.create_provider_user("demo-provider")
    provider = client.add_provider("demo-account", "us-east-1", key_id, secret)
    say(f"provider {provider['provider_id']} added (account {provider['account_id']}, seed policy only)")
    submitted = client.submit_job(str(provider["provider_id"]), TASK)
    job_id = str(submitted["job_id"])
    say(f"submitted {job_id}: A10G:1 → {submitted['instance_type']} (${submitted['hourly_price']}/h on demand)")
    stages: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            job = client.get_job(job_id)
            label = str(job["status"]) + (f" ({job['instance_id']})" if job.get("instance_id") else "")
            if not stages or stages[-1] != label:
                stages.append(label)
                say(f"status {label}")
            if job["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = ""
    for text in client.follow_logs(job_id, poll=0.3):
        output += text
        sys.stdout.write(text)
        sys.stdout.flush()
    watcher.join(60)
    done.set()
    job = client.get_job(job_id)
    deadline = time.monotonic() + 60
    while job.get("instance_state") != "terminated" and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get_job(job_id)
    expected = [f"epoch {i}/{LINES}" for i in range(1, LINES + 1)]
    got = [line.split("  ")[0] for line in output.splitlines() if line.startswith("epoch ")]
    checks = {
        "job SUCCEEDED": job["status"] == "SUCCEEDED" and job.get("exit_code") == 0,
        f"all {LINES} epoch lines arrived, in order, once": got == expected,
        "the last line arrived": output.rstrip().endswith("training complete"),
        "the instance was terminated": job.get("instance_state") == "terminated",
    }
    say("summary")
    print(f"    job {job_id}  {job['status']}  exit code {job.get('exit_code')}  on {job['instance_type']}")
    print(f"    instance {job.get('instance_id')}  {job.get('instance_state')}")
    print(f"    stages  {' → '.join(s.split(' ')[0] for s in stages)}")
    took = time.monotonic() - started
    print(f"    {len(output.splitlines())} log lines, {len(output.encode())} bytes; the demo took {took:.0f} s")
    for check, ok in checks.items():
        print(f"    [{'ok' if ok else 'FAILED'}] {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
