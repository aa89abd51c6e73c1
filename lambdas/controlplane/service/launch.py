"""Launch: RunInstances for a LAUNCHING job, exactly once, with errors turned into a failure reason and a sentence.

Exactly once: before launching, look for an instance tagged with the job id (a retried step finds what an earlier
attempt launched) and send a deterministic ClientToken (real EC2 deduplicates on it; the user data is
byte-identical on a retry because the host key is derived, not random). Before trying another zone the job records
it, so a retried step resumes with the very request (zone, token) that may already have succeeded, instead of
taking a new path with a new token while DescribeInstances lags. Fallbacks: a new instance profile that IAM has not
propagated yet is retried with backoff (bounded); a capacity error is retried in the zones AWS names, then in the
region's other zones. `use_spot: auto` walks the zones on spot first and, when no zone has spot capacity or the spot
quota (or the spot service-linked role) is missing, records the switch and walks them again on-demand: the cheaper
market wherever it exists before the dearer one anywhere. The step never runs into its Lambda timeout: when time
runs short it hands over to the workflow's retry (UpstreamUnavailable).

Attempts (managed recovery, core/recovery.py): every instance is tagged with the job's attempt and the ClientToken
includes it, so a retried step finds (or EC2 deduplicates) only its own attempt's instance; a live instance of an
earlier attempt is terminated, never adopted. Regions: when no zone (and market) of the job's region has capacity,
the job moves on to the next region of `resources.region` (the workflow bootstraps it, then launches again); when
none is left, a job with `job_recovery.max_wait_minutes` waits in WAITING_CAPACITY and tries every region again after
`capacity_retry_seconds` (each such round with new tokens), until the wait runs out: then FAILED / CAPACITY.

Vanished resources: when the workflow skipped Bootstrap (Validate found the team's cached bootstrap record) and
RunInstances says the security group or key pair it names does not exist, the cache is dropped and the step answers
`bootstrap`: the workflow bootstraps (re-creating what is gone) and launches again. After a Bootstrap step in the
same execution the same error fails the job (LAUNCH_ERROR), as it always did.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.ec2 import LIVE_STATES, PROVIDER_OPERATIONS, Ec2Account, error_code, error_message
from controlplane.core import catalog, images, provisioning, sshkeys, userdata
from controlplane.core.errors import JobFailed, JobNotActive, TransitionRefused, UpstreamUnavailable
from controlplane.core.launch_errors import (
    Action,
    Classified,
    after_spot,
    capacity_exhausted,
    classify,
    next_region_note,
    no_spot_capacity,
    regions_exhausted,
    requested_zones,
    spot_fallback_note,
    waiting_for_capacity,
)
from controlplane.core.lifecycle import LAUNCHABLE, FailureReason, JobStatus
from controlplane.core.markets import Market, hourly_price, market_of
from controlplane.core.models import BootstrapRecord, Job, utcnow
from controlplane.core.ports import JobStore, ProviderClients, ProviderCredentials, SecretStore
from controlplane.service.bootstrap import BootstrapService
from controlplane.service.images import ImageResolver

MAX_ZONE_ATTEMPTS = 7  # AWS's own choice, then up to six pinned zones
TIME_RESERVE_SECONDS = 20.0  # stop starting new work when the Lambda has less than this left
_GUESSED_ZONE_LETTERS = "abcdef"  # no ec2:DescribeAvailabilityZones in the seed policy: try the usual names
_VANISHED = {"InvalidKeyPair.NotFound", "InvalidGroup.NotFound", "InvalidGroupId.NotFound"}
SPOT_OPTIONS = {
    "MarketType": "spot",
    "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
}  # no MaxPrice: AWS's default maximum is the on-demand price


@dataclass(frozen=True)
class LaunchSettings:
    ssh_user: str
    relay_user: str
    bundle_timeout_seconds: int
    drain_timeout_seconds: int
    shutdown_grace_seconds: int
    boot_allowance_seconds: int
    profile_propagation_wait_seconds: float
    capacity_retry_seconds: int = 60  # WAITING_CAPACITY: the pause before every region is tried again


@dataclass(frozen=True)
class LaunchResult:
    """What the Launch step tells the workflow to do next: `relay` (the instance is recorded, PROVISIONING),
    `bootstrap` (the job moved on to another region: bootstrap it, then launch again) or `wait` (no region had
    capacity: WAITING_CAPACITY, launch again after `wait_seconds`)."""

    job: Job
    next: Literal["relay", "bootstrap", "wait"]
    wait_seconds: int = 0


def client_token(
    team_id: str,
    job_id: str,
    zone: str | None,
    market: Market = Market.ON_DEMAND,
    round_: int = 0,
    attempt: int = 1,
    region: str | None = None,
    capacity_round: int = 0,
) -> str:
    """Deterministic per (team, job, zone, market, round, attempt, region, capacity round) request; 56 ASCII
    characters (EC2 allows 64). Hashed so that job ids users choose cannot collide with another team's or another
    tool's tokens in the same account. A spot and an on-demand request in the same zone are different requests, so
    they get different tokens (one token for two requests is IdempotentParameterMismatch); on-demand round-0 tokens of
    a first attempt in the job's first region are the ones earlier releases sent.

    `round_` counts the retries after an instance profile IAM has not propagated yet (and the re-bootstraps after a
    resource the cached bootstrap record named was gone). EC2 documents what a repeated
    *successful* request returns for its token, not whether a failed one keeps its token; if it did, a retry with the
    same token could replay the first failure and a new team's first launch would never succeed. So each such retry
    uses a new round, recorded on the job before the request (a retried step resumes with the same token). For the
    same reason each attempt of the job (`attempt`), each region after the job's first (`region`, None for the first)
    and each round over the regions after waiting for capacity (`capacity_round`) is a new request with a new token."""
    material = f"{team_id}\x00{job_id}\x00{zone or ''}" + ("\x00spot" if market == Market.SPOT else "")
    if round_:
        material += f"\x00round{round_}"
    if attempt != 1:
        material += f"\x00attempt{attempt}"
    if region:
        material += f"\x00region{region}"
    if capacity_round:
        material += f"\x00capacity{capacity_round}"
    digest = hashlib.sha256(material.encode()).hexdigest()
    return f"ec2jobs-{digest[:48]}"


def job_regions(job: Job) -> tuple[str, ...]:
    """The job's regions in order: `resources.region` (a list), else the region it was submitted to."""
    regions = job.spec.resources.regions if job.spec is not None else ()
    return regions or (job.region,)


def _token_region(job: Job) -> str | None:
    """The region as its ClientToken names it: None in the job's first region (the tokens earlier releases sent)."""
    return None if job.region == job_regions(job)[0] else job.region


@dataclass(frozen=True)
class Launched:
    """What a RunInstances walk produced: the instance and the notes it leaves on the job."""

    instance: dict[str, Any]
    notes: tuple[str, ...] = ()


class _Vanished(Exception):
    """RunInstances said the security group or key pair the bootstrap record names does not exist (deleted)."""

    def __init__(self, failure: JobFailed, round_: int) -> None:
        super().__init__(failure.message)
        self.failure = failure  # the job's failure if it was bootstrapped this execution
        self.round = round_  # the profile-propagation round of the failed request


class _NoCapacity(Exception):
    """No zone (in any market of the job) of the job's region had capacity: the region is exhausted."""

    def __init__(self, failure: JobFailed, zones: list[str], notes: list[str]) -> None:
        super().__init__(failure.message)
        self.failure = failure  # today's CAPACITY failure for this region (with why auto left spot)
        self.zones = zones  # the zones the last market's walk tried
        self.notes = notes  # the notes the walk left (already on the job: see _remember_attempt)


def _no_deadline() -> float:
    return float("inf")


def _live(instance: dict[str, Any]) -> bool:
    return instance.get("State", {}).get("Name") in LIVE_STATES


def _terminable(instance: dict[str, Any]) -> bool:
    """Live and not already on its way out."""
    return _live(instance) and instance.get("State", {}).get("Name") != "shutting-down"


def _failed(reason: FailureReason, message: str, fell_back: bool, spot_why: str | None) -> JobFailed:
    """The job's failure; after `use_spot: auto` fell back to on-demand, the message says why spot failed."""
    return JobFailed(reason, after_spot(message, spot_why) if fell_back else message)


class _ZoneWalk:
    """The zones one market is tried in: AWS's choice, then the zones AWS names, then the usual zone names."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.tried: list[str] = []
        self.queue: list[str] = []
        self.guessed = False
        self.last_capacity = ""

    def next_zone(self, zone: str | None, code: str, message: str, verdict: Classified) -> str | None:
        """After a capacity (or unknown-zone) error in `zone`: the zone to try next, or None when none is left."""
        self.tried.append(zone or "AWS's choice")
        self.tried += [z for z in requested_zones(message) if z not in self.tried]
        if verdict.action == Action.TRY_OTHER_ZONE:
            self.last_capacity = f"{code}: {verdict.message}"
            self.queue += [z for z in verdict.zones if z not in self.tried and z not in self.queue]
        if not self.queue and not self.guessed:
            self.guessed = True
            self.queue = [
                z for z in (f"{self.region}{letter}" for letter in _GUESSED_ZONE_LETTERS) if z not in self.tried
            ]
        if not self.queue or len(self.tried) >= MAX_ZONE_ATTEMPTS:
            return None
        return self.queue.pop(0)


class LaunchService:
    def __init__(
        self,
        jobs: JobStore,
        secrets: SecretStore,
        clients: ProviderClients,
        resolver: ImageResolver,
        bootstrap: BootstrapService,
        settings: LaunchSettings,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.jobs = jobs
        self.secrets = secrets
        self.clients = clients
        self.resolver = resolver
        self.bootstrap = bootstrap
        self.settings = settings
        self.sleep = sleep
        self.clock = clock

    def launch(
        self,
        job: Job,
        credentials: ProviderCredentials,
        record: BootstrapRecord,
        time_left: Callable[[], float] = _no_deadline,
        *,
        unchecked: bool = False,
    ) -> LaunchResult:
        """Start the job's instance for its current attempt (or find the one a retried step started) and move the
        job to PROVISIONING (`relay`); or move it to its next region (`bootstrap`) or to WAITING_CAPACITY (`wait`)
        when its region has no capacity. `record` is the bootstrap of the region the workflow bootstrapped last;
        `time_left` returns the seconds the Lambda has left. `unchecked`: the record is the cached one, not checked
        against the account this execution (the workflow skipped Bootstrap); if RunInstances says a resource it
        names is gone, the cache is dropped and the job goes through Bootstrap (`bootstrap`) instead of failing."""
        ec2 = Ec2Account(self.clients("ec2", credentials, job.region), job.region)
        if job.status.terminal:
            self.reap(job, credentials)
            raise JobNotActive(f"job {job.job_id} is already {job.status}")
        if job.status not in LAUNCHABLE:
            if job.instance_id:  # a retried step after the job was recorded: nothing to do
                return LaunchResult(job, "relay")
            raise JobFailed(FailureReason.LAUNCH_ERROR, f"the launch step ran for a {job.status} job (not validated)")
        if record.region != job.region:  # the job moved on to another region: bootstrap it first
            return LaunchResult(job, "bootstrap")
        spec = job.spec
        if spec is None or job.instance_type is None:
            raise JobFailed(FailureReason.INVALID_SPEC, "the job has no valid task spec")
        team_key = self.secrets.team_key(job.team_id)
        host_key = sshkeys.derive_host_key(team_key.host_key_seed, job.job_id)
        notes: list[str] = []
        try:
            self._end_earlier_attempts_elsewhere(job, credentials)
            instance = self._existing(ec2, job)
            if instance is None:
                family = images.family_for_instance(catalog.get().instances[job.instance_type])
                image = self.resolver.resolve(ec2, family)
                user_data = userdata.render(
                    userdata.WrapperConfig(
                        job_id=job.job_id,
                        team_id=job.team_id,
                        instance_type=job.instance_type,
                        max_runtime_seconds=spec.max_runtime_minutes * 60,
                        shutdown_grace_seconds=self.settings.shutdown_grace_seconds,
                        drain_timeout_seconds=self.settings.drain_timeout_seconds,
                        bundle_timeout_seconds=self.settings.bundle_timeout_seconds,
                        ssh_user=self.settings.ssh_user,
                        relay_user=self.settings.relay_user,
                        ssh_authorized_key=team_key.public_openssh,
                        host_private_key=host_key.private_openssh,
                        host_public_key=host_key.public_openssh,
                    )
                )
                disk = spec.resources.disk_size
                if image.min_disk_gib > disk:
                    notes.append(
                        f"disk_size raised from {disk} to {image.min_disk_gib} GiB, the smallest root volume the "
                        f"image {image.name or image.image_id} allows"
                    )
                    disk = image.min_disk_gib
                request = self._request(job, record, image.image_id, image.root_device_name, disk, user_data)
                launched = self._run(ec2, job, request, record, time_left)
                instance = launched.instance
                notes += launched.notes
        except _NoCapacity as exhausted:
            return self._no_capacity(job, exhausted)
        except _Vanished as vanished:
            if not unchecked:
                raise vanished.failure from None
            # Bootstrap re-creates what is gone; the next request gets its own ClientToken (a new round).
            self._remember_round(job, vanished.round + 1)
            return LaunchResult(job, "bootstrap")
        except ClientError as error:
            raise self._unexpected(error, job) from None
        except BotoCoreError as error:
            raise UpstreamUnavailable(
                f"could not reach EC2 in {job.region} ({type(error).__name__}); retrying"
            ) from None
        return self._record(job, ec2, instance, host_key.public_openssh, record, notes)

    def reap(self, job: Job, credentials: ProviderCredentials) -> list[str]:
        """Terminate every live instance launched for this job (it ended: nothing may keep billing)."""
        ec2 = Ec2Account(self.clients("ec2", credentials, job.region), job.region)
        try:
            live = [
                str(i["InstanceId"])
                for i in ec2.instances_of_job(job.team_id, job.job_id)
                if i.get("State", {}).get("Name") in LIVE_STATES and i.get("State", {}).get("Name") != "shutting-down"
            ]
            if live:
                ec2.terminate(live)
        except (ClientError, BotoCoreError) as error:
            raise UpstreamUnavailable(
                f"could not terminate the instances of ended job {job.job_id} ({type(error).__name__}); retrying"
            ) from None
        return live

    # -- finding and launching ------------------------------------------------------------------------------

    @staticmethod
    def _existing(ec2: Ec2Account, job: Job) -> dict[str, Any] | None:
        """The instance a retried step of the job's current attempt launched (an instance without an attempt tag
        is attempt 1's). A live instance of an earlier attempt is terminated, never adopted; if somehow several of
        the current attempt are alive, keep the first and terminate the others: one job, one instance, always."""
        found = ec2.instances_of_job(job.team_id, job.job_id)
        ours = [i for i in found if provisioning.instance_attempt(i) == job.attempt]
        live = [i for i in ours if _live(i)]
        surplus = [i for i in found if provisioning.instance_attempt(i) < job.attempt and _terminable(i)]
        surplus += [i for i in live[1:] if _terminable(i)]
        if surplus:
            ec2.terminate([str(i["InstanceId"]) for i in surplus])
        if live:
            return live[0]
        return ours[0] if ours else None

    def _end_earlier_attempts_elsewhere(self, job: Job, credentials: ProviderCredentials) -> None:
        """Terminate live instances of earlier attempts in the other regions those attempts ran in (the job's own
        region is swept by `_existing`): the next attempt never runs next to an earlier one."""
        for region in dict.fromkeys(a.region for a in job.attempts if a.region and a.region != job.region):
            there = Ec2Account(self.clients("ec2", credentials, region), region)
            stale = [
                str(i["InstanceId"])
                for i in there.instances_of_job(job.team_id, job.job_id)
                if provisioning.instance_attempt(i) < job.attempt and _terminable(i)
            ]
            if stale:
                there.terminate(stale)

    def _request(
        self, job: Job, record: BootstrapRecord, image_id: str, root_device: str, disk_gib: int, user_data: bytes
    ) -> dict[str, Any]:
        assert job.spec is not None
        assert job.instance_type is not None
        tags = provisioning.instance_tags(job.team_id, job.provider_id, job.job_id, job.name, job.attempt)
        request: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": job.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "SecurityGroupIds": [record.security_group_id],
            "IamInstanceProfile": {"Arn": record.instance_profile_arn},
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {
                "HttpTokens": "required",  # IMDSv2 only
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 2,  # containers on the instance can reach IMDS through one hop
            },
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": disk_gib,
                        "VolumeType": "gp3",
                        "Encrypted": True,
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if record.key_name:
            request["KeyName"] = record.key_name
        return request  # the market (InstanceMarketOptions) is per attempt: see _run

    def _run(
        self,
        ec2: Ec2Account,
        job: Job,
        request: dict[str, Any],
        record: BootstrapRecord,
        time_left: Callable[[], float],
    ) -> Launched:
        """Walk the zones in each market of the job (spot, then on-demand for `use_spot: auto`) until one launches."""
        assert job.instance_type is not None
        assert job.spec is not None
        instance = catalog.get().instances[job.instance_type]
        markets = job.spec.resources.markets
        # A retried step resumes with the request that may have succeeded: the recorded market and zone.
        market = job.launch_market if job.launch_market in markets else markets[0]
        zone: str | None = job.launch_zone
        walk = _ZoneWalk(job.region)
        notes: list[str] = []
        spot_why: str | None = None  # why auto left spot, for the on-demand attempt's failure message
        waited = 0.0
        backoff = 2.0
        round_ = job.launch_round  # profile-propagation retries so far (each with its own ClientToken)
        while True:
            if time_left() < TIME_RESERVE_SECONDS:
                raise UpstreamUnavailable("the launch step is running out of time; the workflow retries it")
            spot = market == Market.SPOT
            token = client_token(
                job.team_id,
                job.job_id,
                zone,
                market,
                round_,
                attempt=job.attempt,
                region=_token_region(job),
                capacity_round=job.capacity_round,
            )
            this = dict(request, ClientToken=token)
            if spot:
                this["InstanceMarketOptions"] = SPOT_OPTIONS
            if zone:
                this["Placement"] = {"AvailabilityZone": zone}
            try:
                return Launched(ec2.run_instance(this), tuple(notes))
            except ClientError as error:
                code, message = error_code(error), error_message(error)
                verdict = classify(
                    code,
                    message,
                    instance_type=instance.name,
                    vcpus=instance.vcpus,
                    region=job.region,
                    spot=spot,
                    zone=zone,
                )
            fallback = markets[-1] if market != markets[-1] else None  # auto on spot: on-demand is next
            fell_back = market != markets[0]  # auto on on-demand: failure messages say spot was tried first
            if verdict.action == Action.WAIT_FOR_PROFILE:
                limit = self.settings.profile_propagation_wait_seconds
                if waited < limit:
                    pause = min(backoff, limit - waited)
                    if time_left() - pause < TIME_RESERVE_SECONDS:
                        raise UpstreamUnavailable("the new instance profile is still propagating; retrying")
                    self.sleep(pause)
                    waited += pause
                    backoff *= 2
                    round_ += 1
                    self._remember_round(job, round_)
                    continue
                self.bootstrap.forget(job.provider_id, job.region)
                raise JobFailed(
                    FailureReason.LAUNCH_ERROR,
                    f"EC2 still did not accept instance profile {record.instance_profile_name} after "
                    f"{waited:.0f} s (IAM propagation, or the profile was deleted; the next job re-creates it). "
                    f"AWS said: {code}: {verdict.message}",
                )
            if verdict.action == Action.ALREADY_LAUNCHED:
                found = self._await_tagged(ec2, job, time_left)
                if found is not None:
                    return Launched(found, tuple(notes))
                raise UpstreamUnavailable(
                    "EC2 reports this launch request was already made, but the instance is not visible yet; retrying"
                )
            if verdict.action == Action.TRANSIENT:
                raise UpstreamUnavailable(verdict.message)
            if verdict.action in {Action.TRY_OTHER_ZONE, Action.SKIP_ZONE}:
                next_zone = walk.next_zone(zone, code, message, verdict)
                if next_zone is not None:
                    zone = next_zone
                    self._remember_attempt(job, market, zone)
                    continue
                if fallback is None:
                    exhausted = capacity_exhausted(instance.name, job.region, walk.tried, spot, walk.last_capacity)
                    raise _NoCapacity(
                        _failed(FailureReason.CAPACITY, exhausted, fell_back, spot_why), walk.tried, notes
                    )
                spot_why = no_spot_capacity(instance.name, job.region, walk.tried, walk.last_capacity)
            elif fallback is not None and verdict.spot_unavailable:  # the spot quota or the spot role
                spot_why = verdict.spot_unavailable
            else:
                failure = _failed(verdict.reason or FailureReason.LAUNCH_ERROR, verdict.message, fell_back, spot_why)
                if code in _VANISHED:
                    self.bootstrap.forget(job.provider_id, job.region)
                    raise _Vanished(failure, round_)
                raise failure
            # use_spot: auto and spot is unavailable: on-demand, walking the zones again from AWS's choice.
            note = spot_fallback_note(spot_why)
            notes.append(note)
            market, zone, walk = fallback, None, _ZoneWalk(job.region)
            self._remember_attempt(job, market, zone, note)

    def _remember_attempt(self, job: Job, market: Market, zone: str | None, note: str | None = None) -> None:
        """Record the next request (market, zone) before making it, so that a retried step repeats exactly it."""
        fields: dict[str, Any] = {"launch_market": market, "launch_zone": zone}
        if note is not None:
            fields["notes"] = list(dict.fromkeys([*job.notes, note]))
        self._update(job, fields)

    def _remember_round(self, job: Job, round_: int) -> None:
        """Record the next profile-propagation round before its request (a new ClientToken), so that a retried step
        repeats exactly the request that may have succeeded."""
        self._update(job, {"launch_round": round_})

    def _update(self, job: Job, fields: dict[str, Any]) -> Job:
        """Change the job while it is still launching its current attempt (else: it was cancelled, failed, or a
        newer attempt began: this step stops)."""
        try:
            return self.jobs.update(job.job_id, fields, expected=LAUNCHABLE, attempt=job.attempt)
        except TransitionRefused:
            raise JobNotActive(f"job {job.job_id} stopped launching attempt {job.attempt} (cancelled?)") from None

    # -- no capacity: the next region, waiting, or CAPACITY ---------------------------------------------------------

    def _no_capacity(self, job: Job, exhausted: _NoCapacity) -> LaunchResult:
        """No zone of the job's region had capacity: move on to its next region (`bootstrap`); after the last,
        wait for capacity if its job_recovery allows (`wait`), else fail with CAPACITY."""
        assert job.spec is not None
        assert job.instance_type is not None
        regions = job_regions(job)
        tried = list(dict.fromkeys([*job.regions_tried, job.region]))
        start = regions.index(tried[0]) if tried[0] in regions else 0
        rotated = regions[start:] + regions[:start]  # this round began in tried[0]
        next_region = next((region for region in rotated if region not in tried), None)
        if next_region is not None:
            note = next_region_note(job.instance_type, job.region, next_region)
            moved = self._update(
                job,
                {
                    "region": next_region,
                    "launch_zone": None,
                    "launch_market": None,
                    "launch_round": 0,
                    "regions_tried": tried,
                    "status_detail": note,
                    "notes": list(dict.fromkeys([*job.notes, *exhausted.notes, note])),
                },
            )
            return LaunchResult(moved, "bootstrap")
        policy = job.spec.job_recovery
        now = self.clock()
        if policy is None or policy.max_wait_minutes <= 0:
            raise JobFailed(
                FailureReason.CAPACITY, regions_exhausted(job.instance_type, tried, exhausted.failure.message)
            )
        since = job.waiting_since or now
        until = since + dt.timedelta(minutes=policy.max_wait_minutes)
        if now >= until:
            waited = int((now - since).total_seconds() // 60)
            message = regions_exhausted(
                job.instance_type, tried, exhausted.failure.message, waited, policy.max_wait_minutes
            )
            raise JobFailed(FailureReason.CAPACITY, message)
        pause = self.settings.capacity_retry_seconds
        retry_at = now + dt.timedelta(seconds=pause)
        fields: dict[str, Any] = {
            "waiting_since": since,
            "capacity_retry_at": retry_at,
            "capacity_round": job.capacity_round + 1,
            "regions_tried": [],
            "region": tried[0],  # the next round begins where this one did
            "launch_zone": None,
            "launch_market": None,
            "launch_round": 0,
            "status_detail": waiting_for_capacity(
                job.instance_type, tried, exhausted.zones, retry_at, until, policy.max_wait_minutes
            ),
        }
        if job.status == JobStatus.WAITING_CAPACITY:
            return LaunchResult(self._update(job, fields), "wait", pause)
        try:
            waiting = self.jobs.transition(
                job.job_id, JobStatus.WAITING_CAPACITY, expected=JobStatus.LAUNCHING, fields=fields, attempt=job.attempt
            )
        except TransitionRefused:
            raise JobNotActive(f"job {job.job_id} stopped launching attempt {job.attempt} (cancelled?)") from None
        return LaunchResult(waiting, "wait", pause)

    def _await_tagged(self, ec2: Ec2Account, job: Job, time_left: Callable[[], float]) -> dict[str, Any] | None:
        for pause in (1.0, 2.0, 4.0, 8.0):
            found = self._existing(ec2, job)
            if found is not None or time_left() - pause < TIME_RESERVE_SECONDS:
                return found
            self.sleep(pause)
        return self._existing(ec2, job)

    def _unexpected(self, error: ClientError, job: Job) -> Exception:
        """A ClientError outside RunInstances. The provider's describe calls are classified like RunInstances; the
        control plane's own calls (DynamoDB caches) are never the provider's fault: retry them."""
        code, message = error_code(error), error_message(error)
        if error.operation_name not in PROVIDER_OPERATIONS:
            return UpstreamUnavailable(f"the control plane's {error.operation_name} call failed ({code}); retrying")
        verdict = classify(code, message, instance_type=job.instance_type or "", vcpus=0, region=job.region, spot=False)
        if verdict.action == Action.TRANSIENT:
            return UpstreamUnavailable(verdict.message)
        reason = verdict.reason or FailureReason.LAUNCH_ERROR
        if reason == FailureReason.LAUNCH_ERROR:
            return JobFailed(reason, f"Launching failed ({error.operation_name}): {code}: {message}")
        return JobFailed(reason, verdict.message)

    # -- recording ------------------------------------------------------------------------------------------

    def _record(
        self,
        job: Job,
        ec2: Ec2Account,
        instance: dict[str, Any],
        host_public_key: str,
        record: BootstrapRecord,
        notes: list[str],
    ) -> LaunchResult:
        assert job.spec is not None
        now = self.clock()
        launched = instance.get("LaunchTime")
        launched_at = launched if isinstance(launched, dt.datetime) else now
        deadline = launched_at + dt.timedelta(
            seconds=job.spec.max_runtime_minutes * 60
            + self.settings.shutdown_grace_seconds
            + self.settings.boot_allowance_seconds
        )
        instance_id = str(instance["InstanceId"])
        market = market_of(instance)  # what EC2 says it launched, also for an instance an earlier attempt started
        # A job submitted before on_demand_price existed recorded the list price as hourly_price.
        list_price = job.on_demand_price if job.on_demand_price is not None else job.hourly_price
        fields: dict[str, Any] = {
            "instance_id": instance_id,
            "instance_state": str(instance.get("State", {}).get("Name", "pending")),
            "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
            "image_id": instance.get("ImageId"),
            "use_spot": job.spec.resources.use_spot,
            "market": market,
            "hourly_price": hourly_price(market, list_price),
            "on_demand_price": list_price,
            "ssh_host_key": host_public_key,
            "launched_at": launched_at,
            "deadline_at": deadline,
            "notes": list(dict.fromkeys([*job.notes, *record.notes, *notes])),
            # No longer waiting for capacity, nor walking the regions (None: removed).
            "waiting_since": None,
            "capacity_retry_at": None,
            "status_detail": None,
            "regions_tried": None,
            "capacity_round": None,
        }
        try:
            recorded = self.jobs.transition(
                job.job_id, JobStatus.PROVISIONING, expected=LAUNCHABLE, fields=fields, attempt=job.attempt
            )
            return LaunchResult(recorded, "relay")
        except TransitionRefused:
            current = self.jobs.get(job.job_id)
        if current is not None and current.instance_id == instance_id:
            return LaunchResult(current, "relay")  # a concurrent step recorded the same instance
        # Cancelled or failed while we launched, another step recorded another instance, or the attempt is over:
        # ours must not bill.
        try:
            ec2.terminate([instance_id])
        except (ClientError, BotoCoreError):
            raise UpstreamUnavailable(f"could not terminate surplus instance {instance_id}; retrying") from None
        if current is not None and not current.status.terminal:
            if current.attempt == job.attempt:
                return LaunchResult(current, "relay")
            raise JobNotActive(
                f"job {job.job_id} is on attempt {current.attempt}, not {job.attempt}; instance {instance_id} of the "
                "earlier attempt was terminated"
            )
        raise JobNotActive(f"job {job.job_id} ended while its instance started; instance {instance_id} was terminated")
