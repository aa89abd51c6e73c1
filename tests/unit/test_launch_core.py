"""Pure launch logic: error classification, image choice, team resource names/policies, SSH key derivation."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from controlplane.core import images, provisioning, sshkeys
from controlplane.core.launch_errors import (
    Action,
    after_spot,
    capacity_exhausted,
    classify,
    next_region_note,
    no_spot_capacity,
    quota_family,
    regions_exhausted,
    requested_zones,
    spot_fallback_note,
    waiting_for_capacity,
    zone_letters,
    zones_named,
)
from controlplane.core.lifecycle import FailureReason
from controlplane.core.markets import Market, hourly_price, market_of, markets_for, submission_pricing
from controlplane.service.launch import client_token
from local.moto_patches import iam_request_resource

CAPACITY_MESSAGE = (
    "We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you requested (us-east-1a). "
    "Our system will be working on provisioning additional capacity. You can currently get p4d.24xlarge capacity by "
    "not specifying an Availability Zone in your request or choosing us-east-1b, us-east-1c."
)


def _classify(code: str, message: str = "", **kwargs: object) -> object:
    defaults: dict[str, object] = {"instance_type": "g5.xlarge", "vcpus": 4, "region": "us-east-1", "spot": False}
    return classify(code, message, **(defaults | kwargs))  # type: ignore[arg-type]


class TestClassify:
    def test_capacity_error_names_the_zones_to_try(self) -> None:
        verdict = _classify("InsufficientInstanceCapacity", CAPACITY_MESSAGE, instance_type="p4d.24xlarge")
        assert verdict.action == Action.TRY_OTHER_ZONE
        assert verdict.reason == FailureReason.CAPACITY
        assert verdict.zones == ("us-east-1b", "us-east-1c")

    def test_the_zone_that_was_requested_is_recognised(self) -> None:
        assert requested_zones(CAPACITY_MESSAGE) == ("us-east-1a",)

    def test_unsupported_in_a_zone_tries_the_zones_aws_names(self) -> None:
        message = (
            "Your requested instance type (p5.48xlarge) is not supported in your requested Availability Zone "
            "(us-east-1e). Please retry your request by not specifying an Availability Zone or choosing us-east-1a, "
            "us-east-1b."
        )
        verdict = _classify("Unsupported", message, instance_type="p5.48xlarge")
        assert verdict.action == Action.TRY_OTHER_ZONE
        assert verdict.zones == ("us-east-1a", "us-east-1b")
        assert "does not offer" in capacity_exhausted(
            "p5.48xlarge", "us-east-1", ["us-east-1e"], False, "Unsupported: x"
        )

    def test_zones_named_without_a_suggestion_lists_every_zone(self) -> None:
        assert zones_named("no capacity in us-west-2a or us-west-2d") == ("us-west-2a", "us-west-2d")

    @pytest.mark.parametrize(
        ("instance_type", "spot", "quota"),
        [
            ("g5.xlarge", False, "Running On-Demand G and VT instances"),
            ("p4d.24xlarge", False, "Running On-Demand P instances"),
            ("m7i.large", False, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
            ("g6.xlarge", True, "All G and VT Spot Instance Requests"),
            ("p5.48xlarge", True, "All P Spot Instance Requests"),
        ],
    )
    def test_vcpu_limit_says_which_quota_to_raise(self, instance_type: str, spot: bool, quota: str) -> None:
        verdict = _classify(
            "VcpuLimitExceeded", "You have requested more vCPU capacity", instance_type=instance_type, spot=spot
        )
        assert verdict.action == Action.FAIL
        assert verdict.reason == FailureReason.QUOTA
        assert quota in verdict.message
        assert "Service Quotas" in verdict.message

    def test_spot_count_limit_is_a_spot_quota(self) -> None:
        verdict = _classify("MaxSpotInstanceCountExceeded", "Max spot instance count exceeded", spot=True)
        assert verdict.reason == FailureReason.QUOTA
        assert "Spot Instance Requests" in verdict.message

    def test_profile_propagation_is_waited_for(self) -> None:
        message = "Value (transformerlab-ec2-profile-t1) for parameter iamInstanceProfile.name is invalid."
        assert _classify("InvalidParameterValue", message).action == Action.WAIT_FOR_PROFILE

    @pytest.mark.parametrize("code", ["AuthFailure", "UnauthorizedOperation", "OptInRequired"])
    def test_auth_failures_are_credentials(self, code: str) -> None:
        verdict = _classify(code, "You are not authorized. Encoded authorization failure message: AAAA-secret-ish")
        assert verdict.reason == FailureReason.CREDENTIALS
        assert "Encoded authorization failure message" not in verdict.message

    @pytest.mark.parametrize("code", ["RequestLimitExceeded", "InternalError", "Unavailable"])
    def test_throttling_is_transient(self, code: str) -> None:
        assert _classify(code).action == Action.TRANSIENT

    def test_anything_else_is_a_launch_error_with_aws_text(self) -> None:
        verdict = _classify("InvalidParameterCombination", "The parameter iops is not supported for gp2 volumes.")
        assert verdict.reason == FailureReason.LAUNCH_ERROR
        assert "iops is not supported" in verdict.message
        assert "InvalidParameterCombination" in verdict.message

    def test_a_guessed_zone_that_does_not_exist_is_skipped(self) -> None:
        verdict = _classify("InvalidParameterValue", "Invalid availability zone: [us-east-1f]", zone="us-east-1f")
        assert verdict.action == Action.SKIP_ZONE

    def test_token_reuse_means_an_earlier_attempt_launched(self) -> None:
        assert _classify("IdempotentParameterMismatch").action == Action.ALREADY_LAUNCHED

    def test_quota_family(self) -> None:
        assert [quota_family(t) for t in ("p5.48xlarge", "g4dn.xlarge", "c7i.large")] == ["p", "g", "standard"]


class TestClientToken:
    def test_deterministic_distinct_and_at_most_64_characters(self) -> None:
        tokens = {
            client_token("t1", "job-1", None),
            client_token("t1", "job-1", "us-east-1b"),
            client_token("t2", "job-1", None),
            client_token("t1", "j" * 64, "us-east-1b"),
        }
        assert len(tokens) == 4
        assert all(len(token) <= 64 and token.isascii() for token in tokens)
        assert client_token("t1", "job-1", "us-east-1b") == client_token("t1", "job-1", "us-east-1b")

    def test_given_spot_and_on_demand_in_the_same_zone_then_different_tokens_each_stable(self) -> None:
        for zone in (None, "us-east-1b"):
            spot = client_token("t1", "job-1", zone, Market.SPOT)
            on_demand = client_token("t1", "job-1", zone, Market.ON_DEMAND)
            assert spot != on_demand  # one token for two different requests is IdempotentParameterMismatch
            assert spot == client_token("t1", "job-1", zone, Market.SPOT)  # a retried attempt reuses its token
            assert len(spot) <= 64
            assert spot.isascii()

    def test_given_on_demand_then_the_token_is_the_one_earlier_releases_sent(self) -> None:
        import hashlib

        legacy = "ec2jobs-" + hashlib.sha256(b"t1\x00job-1\x00us-east-1b").hexdigest()[:48]
        assert client_token("t1", "job-1", "us-east-1b", Market.ON_DEMAND) == legacy
        # A first attempt in the job's first region, before any wait for capacity: still that token.
        assert client_token("t1", "job-1", "us-east-1b", Market.ON_DEMAND, 0, 1, None, 0) == legacy

    def test_given_attempts_regions_and_capacity_rounds_then_each_request_has_its_own_stable_token(self) -> None:
        variants: list[tuple[int, str | None, int]] = [  # (attempt, region, capacity round)
            (1, None, 0),
            (2, None, 0),
            (3, None, 0),
            (1, "us-west-2", 0),
            (1, None, 1),
            (1, None, 2),
            (2, "us-west-2", 1),
        ]
        for zone in (None, "us-east-1b"):
            for market in (Market.SPOT, Market.ON_DEMAND):
                tokens = [client_token("t1", "job-1", zone, market, 0, *v) for v in variants]
                assert len(set(tokens)) == len(variants)
                again = [client_token("t1", "job-1", zone, market, 0, *v) for v in variants]
                assert tokens == again  # a retried step of an attempt repeats its token
                assert all(len(token) <= 64 and token.isascii() for token in tokens)
        # The profile-propagation round and the attempt are different counters: never the same token.
        assert client_token("t1", "job-1", None, round_=2) != client_token("t1", "job-1", None, attempt=2)


class TestRegionsAndWaiting:
    """The sentences of the region walk and of waiting for capacity."""

    LAST = "AWS has no on-demand capacity for g5.xlarge in us-west-2 right now (tried: AWS's choice, us-west-2b)."

    def test_given_one_region_and_no_wait_then_the_message_is_the_region_walks_as_before(self) -> None:
        assert regions_exhausted("g5.xlarge", ["us-east-1"], self.LAST) == self.LAST

    def test_given_several_regions_then_each_is_named_before_the_last_walk(self) -> None:
        text = regions_exhausted("g5.xlarge", ["us-east-1", "eu-west-1", "us-west-2"], self.LAST)
        assert text == f"AWS had no capacity for g5.xlarge in us-east-1, eu-west-1 and us-west-2. {self.LAST}"

    def test_given_a_wait_then_how_long_and_the_limit(self) -> None:
        text = regions_exhausted("g5.xlarge", ["us-east-1", "us-west-2"], self.LAST, 241, 240)
        assert text.startswith(
            "AWS had no capacity for g5.xlarge in us-east-1 and us-west-2; waited 241 minutes "
            "(job_recovery.max_wait_minutes 240). "
        )
        assert regions_exhausted("g5.xlarge", ["us-east-1"], self.LAST, 60, 60).startswith(
            "AWS had no capacity for g5.xlarge in us-east-1; waited 60 minutes"
        )

    def test_the_waiting_detail_says_where_when_and_until_when(self) -> None:
        retry_at = dt.datetime(2026, 3, 1, 12, 1, 5, tzinfo=dt.UTC)
        until = dt.datetime(2026, 3, 1, 16, 0, 30, tzinfo=dt.UTC)
        zones = ["AWS's choice", "us-west-2b", "us-west-2a", "us-west-2b"]
        assert waiting_for_capacity("g5.xlarge", ["us-east-1", "us-west-2"], zones, retry_at, until, 240) == (
            "no capacity for g5.xlarge in us-east-1 and us-west-2 (b, a); trying again at 12:01:05 UTC, until "
            "16:00 UTC (max_wait_minutes 240)"
        )
        next_day = until + dt.timedelta(days=1)
        assert "until 2026-03-02 16:00 UTC" in waiting_for_capacity(
            "g5.xlarge", ["us-east-1"], [], retry_at, next_day, 1680
        )
        assert "us-east-1;" in waiting_for_capacity("g5.xlarge", ["us-east-1"], ["AWS's choice"], retry_at, until, 5)

    def test_zone_letters_and_the_next_region_note(self) -> None:
        assert zone_letters("us-east-1", ["us-east-1a", "AWS's choice", "us-west-2c", "us-east-1f"]) == ("a", "f")
        assert next_region_note("g5.xlarge", "us-east-1", "us-west-2") == (
            "no capacity for g5.xlarge in us-east-1: trying us-west-2"
        )


class TestSpotErrors:
    """Which RunInstances errors mean "spot is unavailable, on-demand may work" (use_spot: auto falls back)."""

    @pytest.mark.parametrize(
        ("code", "message"),
        [
            ("InsufficientInstanceCapacity", "There is no Spot capacity available that matches your request."),
            ("UnfulfillableCapacity", "There isn't enough spare capacity to fulfill your request for Spot Instances"),
            ("SpotMaxPriceTooLow", "Your Spot request price of 0.526 is lower than the minimum required Spot price"),
        ],
    )
    def test_given_a_spot_capacity_error_then_the_other_zones_are_tried_first(self, code: str, message: str) -> None:
        verdict = _classify(code, message, spot=True)
        assert (verdict.action, verdict.reason) == (Action.TRY_OTHER_ZONE, FailureReason.CAPACITY)

    @pytest.mark.parametrize("code", ["MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "InstanceLimitExceeded"])
    def test_given_a_quota_error_on_a_spot_request_then_only_spot_is_unavailable(self, code: str) -> None:
        verdict = _classify(code, "limit exceeded", instance_type="g6.xlarge", spot=True)
        assert (verdict.action, verdict.reason) == (Action.FAIL, FailureReason.QUOTA)
        assert "All G and VT Spot Instance Requests" in verdict.message  # use_spot: true fails with this
        assert verdict.spot_unavailable.startswith("the spot quota is too low to start g6.xlarge (4 vCPUs)")
        assert code in verdict.spot_unavailable

    def test_given_a_quota_error_on_an_on_demand_request_then_it_is_not_a_spot_fallback(self) -> None:
        verdict = _classify("VcpuLimitExceeded", "limit exceeded", spot=False)
        assert verdict.reason == FailureReason.QUOTA
        assert verdict.spot_unavailable == ""

    def test_given_the_spot_service_linked_role_is_missing_then_credentials_with_the_command_to_fix_it(self) -> None:
        message = "The provided credentials do not have permission to create the service-linked role for EC2 Spot"
        verdict = _classify("AuthFailure.ServiceLinkedRoleCreationNotPermitted", message, spot=True)
        assert (verdict.action, verdict.reason) == (Action.FAIL, FailureReason.CREDENTIALS)
        assert "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com" in verdict.message
        assert "AWSServiceRoleForEC2Spot" in verdict.spot_unavailable

    def test_given_spot_capacity_exhausted_then_the_hint_offers_auto(self) -> None:
        text = capacity_exhausted("g5.xlarge", "us-east-1", ["us-east-1a"], True, "InsufficientInstanceCapacity: x")
        assert "AWS has no spot capacity" in text
        assert "use_spot: auto (falls back to on-demand)" in text

    def test_given_auto_left_spot_then_the_note_and_a_later_failure_say_why(self) -> None:
        why = no_spot_capacity(
            "g5.xlarge", "us-east-1", ["AWS's choice", "us-east-1b"], "InsufficientInstanceCapacity: x"
        )
        assert why == (
            "no spot capacity for g5.xlarge in us-east-1 (tried: AWS's choice, us-east-1b). "
            "AWS said: InsufficientInstanceCapacity: x"
        )
        assert spot_fallback_note(why) == f"use_spot: auto fell back to on-demand: {why}"
        assert after_spot("Quota too low.", why) == f"Quota too low. (use_spot: auto tried spot first: {why})"
        assert after_spot("Quota too low.", None).endswith("(use_spot: auto tried spot first; see the job's notes)")


class TestMarkets:
    @pytest.mark.parametrize(
        ("use_spot", "markets"),
        [(True, (Market.SPOT,)), (False, (Market.ON_DEMAND,)), ("auto", (Market.SPOT, Market.ON_DEMAND))],
    )
    def test_given_use_spot_then_the_markets_in_order(self, use_spot: bool | str, markets: tuple[Market]) -> None:
        assert markets_for(use_spot) == markets  # type: ignore[arg-type]

    def test_given_an_instance_then_its_market_is_what_ec2_says(self) -> None:
        assert market_of({"InstanceId": "i-1", "InstanceLifecycle": "spot"}) == Market.SPOT
        assert market_of({"InstanceId": "i-1"}) == Market.ON_DEMAND  # on-demand instances have no lifecycle

    def test_given_a_market_then_the_recorded_price_is_never_a_guess(self) -> None:
        assert hourly_price(Market.ON_DEMAND, 0.526) == 0.526
        assert hourly_price(Market.SPOT, 0.526) is None  # the catalog has no spot prices
        assert hourly_price(None, 0.526) is None  # auto before launch: the market is not known yet

    def test_given_a_submission_then_only_on_demand_has_a_price_and_spot_says_why_not(self) -> None:
        on_demand = submission_pricing(False, "g5.xlarge", 1.006)
        assert (on_demand.hourly_price, on_demand.on_demand_price, on_demand.notes) == (1.006, 1.006, ())
        for use_spot in (True, "auto"):
            pricing = submission_pricing(use_spot, "g5.xlarge", 1.006)  # type: ignore[arg-type]
            assert (pricing.hourly_price, pricing.on_demand_price) == (None, 1.006)
            (note,) = pricing.notes
            assert "no spot price is recorded" in note
            assert "never pays more than the on-demand price" in note
            assert "1.006 USD/h for g5.xlarge" in note
        (unpriced,) = submission_pricing(True, "p5.4xlarge", None).notes
        assert "never pays more" not in unpriced


class TestImages:
    def _image(self, name: str, date: str, **extra: str) -> dict[str, str]:
        base = {"ImageId": f"ami-{date}", "Name": name, "CreationDate": date, "OwnerId": images.AMAZON_DLAMI_OWNER}
        return base | extra

    def test_newest_available_x86_image_of_the_preferred_os(self) -> None:
        dl = "Deep Learning Base OSS Nvidia Driver GPU AMI"
        candidates = [
            self._image(f"{dl} (Ubuntu 22.04) 2", "2025-12-01"),  # newer, but the older OS
            self._image(f"{dl} (Ubuntu 24.04) 1", "2025-10-01"),
            self._image(f"{dl} (Ubuntu 24.04) 2", "2025-11-01"),
            self._image(f"{dl} (Ubuntu 24.04) 3", "2025-11-20", Architecture="arm64"),
            self._image(f"{dl} (Ubuntu 24.04) 4", "2025-11-21", State="deprecated"),
            self._image(f"{dl} (Ubuntu 24.04) 5", "2025-11-22", OwnerId="111111111111"),  # an impostor
        ]
        chosen = images.choose(images.QUERIES[images.ImageFamily.GPU], candidates)
        assert chosen is not None
        assert chosen["Name"].endswith("(Ubuntu 24.04) 2")

    def test_falls_back_to_the_next_pattern_then_none(self) -> None:
        query = images.QUERIES[images.ImageFamily.GPU]
        only_jammy = [self._image("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) x", "2025-01-01")]
        assert images.choose(query, only_jammy) is not None
        assert images.choose(query, []) is None

    def test_family_follows_gpu_count(self) -> None:
        assert images.family_for(0) == images.ImageFamily.CPU
        assert images.family_for(8) == images.ImageFamily.GPU


class TestProvisioning:
    def test_names_follow_the_seed(self) -> None:
        names = provisioning.TeamResources("transformerlab", "team-a")
        assert (names.security_group, names.key_pair, names.role, names.instance_profile) == (
            "transformerlab-compute-team-a",
            "transformerlab-team-a",
            "transformerlab-ec2-role-team-a",
            "transformerlab-ec2-profile-team-a",
        )

    def test_longest_team_id_fits_iam_name_limit(self) -> None:
        names = provisioning.TeamResources("transformerlab", "t" * 32)
        assert len(names.instance_profile) <= 128
        assert len(names.role) <= 64

    def test_instance_role_may_only_terminate_itself_within_the_team(self) -> None:
        policy = provisioning.self_termination_policy("team-a")
        (statement,) = policy["Statement"]
        assert statement["Action"] == "ec2:TerminateInstances"
        assert statement["Effect"] == "Allow"
        # Documented condition keys only: the calling instance's ARN must be the target's, within the team's tag.
        assert statement["Condition"]["ArnEquals"] == {
            "ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"
        }
        assert statement["Condition"]["StringEquals"] == {f"ec2:ResourceTag/{provisioning.TEAM_TAG}": "team-a"}
        assert "aws:ARN" not in json.dumps(policy)
        assert json.loads(provisioning.policy_json(policy)) == policy

    def test_instances_and_volumes_carry_the_attempt(self) -> None:
        tags = {t["Key"]: t["Value"] for t in provisioning.instance_tags("team-a", "p1", "job-1", "train", 3)}
        assert tags[provisioning.ATTEMPT_TAG] == "3"
        assert tags[provisioning.JOB_TAG] == "job-1"
        first = {t["Key"]: t["Value"] for t in provisioning.instance_tags("team-a", "p1", "job-1", None)}
        assert first[provisioning.ATTEMPT_TAG] == "1"

    @pytest.mark.parametrize(
        ("tags", "attempt"),
        [
            ([{"Key": provisioning.ATTEMPT_TAG, "Value": "4"}], 4),
            ([{"Key": provisioning.JOB_TAG, "Value": "job-1"}], 1),  # launched before attempts existed
            ([{"Key": provisioning.ATTEMPT_TAG, "Value": "x"}], 1),
            ([{"Key": provisioning.ATTEMPT_TAG, "Value": "0"}], 1),
            (None, 1),
        ],
    )
    def test_the_attempt_of_an_instance(self, tags: list[dict[str, str]] | None, attempt: int) -> None:
        assert provisioning.instance_attempt({"InstanceId": "i-1", "Tags": tags}) == attempt

    def test_only_ec2_may_assume_the_role(self) -> None:
        (statement,) = provisioning.role_trust_policy()["Statement"]
        assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}


class TestSshKeys:
    def test_host_key_is_derived_deterministically_per_job(self) -> None:
        seed = sshkeys.new_seed()
        first, again = sshkeys.derive_host_key(seed, "job-1"), sshkeys.derive_host_key(seed, "job-1")
        other_job, other_seed = (
            sshkeys.derive_host_key(seed, "job-2"),
            sshkeys.derive_host_key(sshkeys.new_seed(), "job-1"),
        )
        assert first == again
        assert len({first.public_openssh, other_job.public_openssh, other_seed.public_openssh}) == 3
        assert first.public_openssh.startswith("ssh-ed25519 ")
        assert first.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        sshkeys.load_public(first.public_openssh)

    def test_derived_private_key_is_a_valid_openssh_key_for_its_public_half(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        pair = sshkeys.derive_host_key(sshkeys.new_seed(), "job-x")
        loaded = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
        assert isinstance(loaded, Ed25519PrivateKey)
        public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        assert sshkeys.key_blob(pair.public_openssh) == sshkeys.key_blob(public.decode())

    def test_repr_never_shows_the_private_key(self) -> None:
        pair = sshkeys.generate("c")
        assert "PRIVATE" not in repr(pair)
        assert pair.private_openssh not in repr(pair)

    def test_fingerprint_matches_openssh_format(self) -> None:
        pair = sshkeys.generate()
        assert pair.fingerprint.startswith("SHA256:")
        assert "=" not in pair.fingerprint


class TestMotoIamResource:
    def test_role_and_profile_requests_resolve_to_their_arns(self) -> None:
        account = "123456789012"
        assert iam_request_resource(account, {"RoleName": ["r1"]}, None) == f"arn:aws:iam::{account}:role/r1"
        assert iam_request_resource(account, {"RoleName": ["r1"]}, "arn:aws:iam::1:role/p/r1") == (
            "arn:aws:iam::1:role/p/r1"
        )
        both = {"RoleName": ["r1"], "InstanceProfileName": ["p1"]}
        assert iam_request_resource(account, both, None) == f"arn:aws:iam::{account}:instance-profile/p1"
        assert iam_request_resource(account, {}, None) == "*"
