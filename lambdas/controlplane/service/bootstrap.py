"""Bootstrap: a team's security group, key pair, instance role and profile in a provider account + region.

Created once and reused. Every step is "look, create if missing, treat Duplicate / EntityAlreadyExists as success",
so two first launches of a new team racing each other both succeed and agree on the same resources. The result is
cached (state table); later launches confirm it with one DescribeSecurityGroups call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.ec2 import PROVIDER_OPERATIONS, Ec2Account, error_code, error_message
from controlplane.adapters.iam import IamAccount
from controlplane.core import provisioning, sshkeys
from controlplane.core.errors import JobFailed, UpstreamUnavailable
from controlplane.core.launch_errors import AUTH_CODES, TRANSIENT_CODES
from controlplane.core.lifecycle import FailureReason
from controlplane.core.models import BootstrapRecord, Provider, utcnow
from controlplane.core.ports import BootstrapCache, ProviderClients, ProviderCredentials, SecretStore, TeamKey

SCHEMA_VERSION = 1
_POLICY_HINT = (
    "check that TransformerLabComputePolicy is attached to the provider's IAM user exactly as in the README "
    "(the seed policy, or the hardened one with its permissions boundary: docs/policies.md) "
    "(and that its resource names match RESOURCE_PREFIX)"
)


@dataclass(frozen=True)
class BootstrapSettings:
    resource_prefix: str
    ssh_ingress_cidr: str


class BootstrapService:
    def __init__(
        self, cache: BootstrapCache, secrets: SecretStore, clients: ProviderClients, settings: BootstrapSettings
    ) -> None:
        self.cache = cache
        self.secrets = secrets
        self.clients = clients
        self.settings = settings

    def ensure(self, provider: Provider, credentials: ProviderCredentials, region: str) -> BootstrapRecord:
        """The team's resources in this account + region, creating what is missing. Raises JobFailed (with a
        failure reason) for errors a person must fix, UpstreamUnavailable for transient ones (and for anything the
        control plane's own services answer: never the provider's fault)."""
        cached = self.cache.get(provider.provider_id, region)
        try:
            ec2 = Ec2Account(self.clients("ec2", credentials, region), region)
            if (
                cached is not None
                and cached.schema_version == SCHEMA_VERSION
                and ec2.security_group(cached.security_group_id) is not None
            ):
                return cached
            team_key = self.secrets.team_key(provider.team_id)
            known = cached.permissions_boundary_arn if cached is not None else None
            record = self._create(provider, credentials, region, ec2, team_key, known)
        except ClientError as error:
            raise _bootstrap_failure(error, region) from None
        except BotoCoreError as error:
            raise UpstreamUnavailable(f"could not reach AWS in {region} ({type(error).__name__}); retrying") from None
        self.cache.put(record)
        return record

    def known(self, provider_id: str, team_id: str, region: str) -> BootstrapRecord | None:
        """The cached record of the team's resources in this account + region, if one of the current schema exists;
        no AWS call, so nothing confirms they still exist (Launch re-bootstraps when RunInstances says one is gone).
        None when there is none or the cache cannot be read now (the Bootstrap step then runs as usual)."""
        try:
            cached = self.cache.get(provider_id, region)
        except (ClientError, BotoCoreError):
            return None
        if cached is None or cached.schema_version != SCHEMA_VERSION or cached.team_id != team_id:
            return None
        return cached

    def forget(self, provider_id: str, region: str) -> None:
        """Drop the cached record (something it names was deleted); the next launch bootstraps again."""
        self.cache.forget(provider_id, region)

    # -- steps ----------------------------------------------------------------------------------------------

    def _create(
        self,
        provider: Provider,
        credentials: ProviderCredentials,
        region: str,
        ec2: Ec2Account,
        team_key: TeamKey,
        known_boundary: str | None = None,
    ) -> BootstrapRecord:
        names = provisioning.TeamResources(self.settings.resource_prefix, provider.team_id)
        tags = provisioning.team_tags(provider.team_id, provider.provider_id)
        notes: list[str] = []
        group_id = self._security_group(ec2, names, provider.team_id, tags)
        key_name = self._key_pair(ec2, names, team_key, tags, notes)
        iam = IamAccount(self.clients("iam", credentials, region))
        boundaries = _RoleBoundary(self.settings.resource_prefix, provider, known_boundary)
        profile_arn, boundary = self._role_and_profile(iam, names, provider.team_id, boundaries)
        return BootstrapRecord(
            provider_id=provider.provider_id,
            team_id=provider.team_id,
            region=region,
            security_group_id=group_id,
            key_name=key_name,
            instance_profile_name=names.instance_profile,
            instance_profile_arn=profile_arn,
            role_name=names.role,
            permissions_boundary_arn=boundary,
            notes=notes,
            created_at=utcnow(),
            schema_version=SCHEMA_VERSION,
        )

    def _security_group(
        self, ec2: Ec2Account, names: provisioning.TeamResources, team_id: str, tags: list[dict[str, str]]
    ) -> str:
        group = _prefer_ours(ec2.security_groups_named(names.security_group), team_id)
        if group is None:
            try:
                group_id = ec2.create_security_group(
                    names.security_group, f"ec2jobs job instances of team {team_id}: SSH for the log relay", tags
                )
                group = {"GroupId": group_id, "IpPermissions": []}
            except ClientError as error:
                if error_code(error) != "InvalidGroup.Duplicate":
                    raise
                group = _prefer_ours(ec2.security_groups_named(names.security_group), team_id)
                if group is None:  # created by a racing launch, not visible yet (eventual consistency)
                    raise _not_visible_yet(f"security group {names.security_group}") from None
        cidr = self.settings.ssh_ingress_cidr
        if not _allows_ssh_from(group, cidr):
            try:
                ec2.allow_ssh(str(group["GroupId"]), cidr, "ec2jobs log relay (SSH)")
            except ClientError as error:
                if error_code(error) in {"InvalidGroup.NotFound", "InvalidGroupId.NotFound"}:
                    raise _not_visible_yet(f"security group {names.security_group}") from None
                if error_code(error) != "InvalidPermission.Duplicate":
                    raise
        return str(group["GroupId"])

    @staticmethod
    def _key_pair(
        ec2: Ec2Account,
        names: provisioning.TeamResources,
        team_key: TeamKey,
        tags: list[dict[str, str]],
        notes: list[str],
    ) -> str | None:
        existing = ec2.key_pair(names.key_pair)
        if existing is None:
            try:
                ec2.import_key_pair(names.key_pair, team_key.public_openssh, tags)
                return names.key_pair
            except ClientError as error:
                if error_code(error) != "InvalidKeyPair.Duplicate":
                    raise
                existing = ec2.key_pair(names.key_pair)
                if existing is None:  # imported by a racing launch, not visible yet: never cache a guess
                    raise _not_visible_yet(f"key pair {names.key_pair}") from None
        ours = sshkeys.key_blob(team_key.public_openssh)
        theirs = str((existing or {}).get("PublicKey") or "")
        if theirs and sshkeys.key_blob(theirs) == ours:
            return names.key_pair
        # A key pair of our name whose private key we do not hold: we cannot delete it (no ec2:DeleteKeyPair in the
        # seed policy) and must not depend on it. Launch without an EC2 key pair; the job wrapper installs the
        # team's public key for the relay itself, so nothing is lost.
        notes.append(
            f"EC2 key pair {names.key_pair!r} in {ec2.region} is not ec2jobs' key (its private key is not held by "
            "the control plane), so instances start without an EC2 key pair and the job wrapper installs the "
            "team's SSH key instead. Delete that key pair if ec2jobs should manage it."
        )
        return None

    @staticmethod
    def _role_and_profile(
        iam: IamAccount, names: provisioning.TeamResources, team_id: str, boundaries: _RoleBoundary
    ) -> tuple[str, str | None]:
        """(instance profile ARN, the permissions boundary the role carries or None)."""
        role = iam.role(names.role)
        if role is None:
            boundary = boundaries.create(iam, names.role, team_id)
        elif not _trusts_ec2(role.get("AssumeRolePolicyDocument")):
            raise JobFailed(
                FailureReason.LAUNCH_ERROR,
                f"IAM role {names.role} exists but EC2 may not assume it, and ec2jobs may not change its trust "
                "policy: delete the role (it is recreated) or let it trust ec2.amazonaws.com.",
            )
        else:
            boundary = _boundary_of(role)
            if boundaries.explicit is not None and boundary != boundaries.explicit:
                raise JobFailed(
                    FailureReason.LAUNCH_ERROR,
                    f"IAM role {names.role} exists without the permissions boundary {boundaries.explicit} this "
                    "provider was registered with, and ec2jobs may not add it: delete the role (ec2jobs recreates "
                    f"it with the boundary) or run `aws iam put-role-permissions-boundary --role-name {names.role} "
                    f"--permissions-boundary {boundaries.explicit}`, then resubmit.",
                )
        desired = provisioning.self_termination_policy(team_id)
        try:
            if iam.role_policy(names.role, provisioning.SELF_TERMINATION_POLICY_NAME) != desired:
                iam.put_role_policy(
                    names.role, provisioning.SELF_TERMINATION_POLICY_NAME, provisioning.policy_json(desired)
                )
        except ClientError as error:
            if error_code(error) == "NoSuchEntity":  # the role was just created and IAM has not caught up
                raise _not_visible_yet(f"IAM role {names.role}") from None
            if error_code(error) in AUTH_CODES and boundary is None and role is not None:
                raise JobFailed(
                    FailureReason.CREDENTIALS,
                    f"IAM role {names.role} has no permissions boundary, and the provider's policy lets ec2jobs "
                    "change only roles that carry one (the hardened policy). Delete the role (ec2jobs recreates it "
                    "with the boundary) or attach the boundary with `aws iam put-role-permissions-boundary`; see "
                    f"docs/policies.md. AWS said: {error_code(error)}.",
                ) from None
            raise
        profile = iam.instance_profile(names.instance_profile)
        if profile is None:
            try:
                iam.create_instance_profile(names.instance_profile)
            except ClientError as error:
                if error_code(error) != "EntityAlreadyExists":
                    raise
            profile = iam.instance_profile(names.instance_profile)
            if profile is None:
                raise _not_visible_yet(f"instance profile {names.instance_profile}")
        roles = [str(r.get("RoleName")) for r in profile.get("Roles", [])]
        if names.role not in roles:
            if roles:
                raise JobFailed(
                    FailureReason.LAUNCH_ERROR,
                    f"instance profile {names.instance_profile} holds role {roles[0]}, not {names.role}; remove that "
                    "role from the profile (ec2jobs may not) and resubmit.",
                )
            try:
                iam.add_role_to_instance_profile(names.instance_profile, names.role)
            except ClientError as error:
                if error_code(error) == "NoSuchEntity":
                    raise _not_visible_yet(f"IAM role {names.role} or profile {names.instance_profile}") from None
                if error_code(error) != "LimitExceeded":  # a racing bootstrap added it first
                    raise
                profile = iam.instance_profile(names.instance_profile) or profile
                if names.role not in [str(r.get("RoleName")) for r in profile.get("Roles", [])]:
                    raise _not_visible_yet(f"the role in instance profile {names.instance_profile}") from None
        return str(profile["Arn"]), boundary


class _RoleBoundary:
    """Which permissions boundary a new instance role gets, without any permission beyond the provider policy's:
    the one the provider was registered with; else the one a previous bootstrap recorded; else none (the seed
    policy), and when CreateRole without one is AccessDenied, the documented default boundary (the hardened
    policy), which is then recorded on the bootstrap record so later launches do not probe again."""

    def __init__(self, prefix: str, provider: Provider, known: str | None) -> None:
        partition = provider.user_arn.split(":")[1] if provider.user_arn.startswith("arn:") else "aws"
        self.explicit = (
            provisioning.boundary_arn(provider.permissions_boundary, provider.account_id, partition)
            if provider.permissions_boundary
            else None
        )
        self.known = known
        self.default = provisioning.boundary_arn(
            provisioning.boundary_policy_name(prefix), provider.account_id, partition
        )

    def create(self, iam: IamAccount, role_name: str, team_id: str) -> str | None:
        """Create the role; returns the boundary it carries."""
        trust = provisioning.policy_json(provisioning.role_trust_policy())
        description = f"ec2jobs job instances of team {team_id}: may terminate only themselves"
        first = self.explicit or self.known
        try:
            iam.create_role(role_name, trust, description, first)
            return first
        except ClientError as error:
            if error_code(error) == "EntityAlreadyExists":
                return _boundary_of(iam.role(role_name) or {}) or first
            if first is not None or error_code(error) not in AUTH_CODES:
                raise
        try:  # denied without a boundary: the hardened policy, whose roles must carry the default boundary
            iam.create_role(role_name, trust, description, self.default)
        except ClientError as error:
            if error_code(error) == "EntityAlreadyExists":
                return _boundary_of(iam.role(role_name) or {}) or self.default
            raise
        return self.default


def _boundary_of(role: dict[str, Any]) -> str | None:
    boundary = role.get("PermissionsBoundary") or {}
    arn = boundary.get("PermissionsBoundaryArn") if isinstance(boundary, dict) else None
    return str(arn) if arn else None


def _prefer_ours(groups: list[dict[str, Any]], team_id: str) -> dict[str, Any] | None:
    """Several VPCs may have a group of this name: prefer the one we tagged for this team."""
    for group in groups:
        tags = {t.get("Key"): t.get("Value") for t in group.get("Tags", [])}
        if tags.get(provisioning.TEAM_TAG) == team_id:
            return group
    return groups[0] if groups else None


def _allows_ssh_from(group: dict[str, Any], cidr: str) -> bool:
    for permission in group.get("IpPermissions", []):
        protocol = str(permission.get("IpProtocol"))
        if (
            protocol == "-1"
            or (protocol == "tcp" and permission.get("FromPort", 0) <= 22 <= permission.get("ToPort", 65535))
        ) and any(r.get("CidrIp") == cidr for r in permission.get("IpRanges", [])):
            return True
    return False


def _trusts_ec2(document: Any) -> bool:
    if not isinstance(document, dict):
        return True  # not decoded: do not second-guess
    for statement in document.get("Statement", []):
        principal = statement.get("Principal", {})
        services = principal.get("Service", []) if isinstance(principal, dict) else []
        services = [services] if isinstance(services, str) else services
        if statement.get("Effect") == "Allow" and "ec2.amazonaws.com" in services:
            return True
    return False


def _not_visible_yet(what: str) -> UpstreamUnavailable:
    """Right after a create (ours or a racing launch's), AWS reads can lag: the workflow retries the step."""
    return UpstreamUnavailable(f"{what} was just created and is not visible yet (AWS eventual consistency); retrying")


def _bootstrap_failure(error: ClientError, region: str) -> Exception:
    code, message = error_code(error), error_message(error)
    operation = str(error.operation_name)
    if operation not in PROVIDER_OPERATIONS:  # the control plane's own Secrets Manager / DynamoDB
        return UpstreamUnavailable(f"the control plane's {operation} call failed ({code}); retrying")
    if code in TRANSIENT_CODES:
        return UpstreamUnavailable(f"AWS was busy during bootstrap ({operation}: {code}); retrying")
    if code in AUTH_CODES:
        return JobFailed(
            FailureReason.CREDENTIALS,
            f"The provider's key may not call {operation} in {region}: {_POLICY_HINT}. AWS said: {code}.",
        )
    if code in {"VPCIdNotSpecified", "VpcIdNotSpecified", "InvalidVpcID.NotFound"}:
        return JobFailed(
            FailureReason.LAUNCH_ERROR,
            f"{region} has no default VPC, which ec2jobs launches into: create one with "
            f"`aws ec2 create-default-vpc --region {region}` and resubmit. AWS said: {code}.",
        )
    return JobFailed(
        FailureReason.LAUNCH_ERROR, f"Setting up the team's resources failed ({operation}): {code}: {message}"
    )
