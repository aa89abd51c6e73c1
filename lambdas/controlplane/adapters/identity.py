"""Provider key checks before anything is stored.

sts:GetCallerIdentity (is the key valid?) then a DryRun EC2 call (is the seed policy attached?).
Each failure names the check and what to fix.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from controlplane.adapters import aws
from controlplane.core.errors import InvalidCredentials, UpstreamUnavailable
from controlplane.core.ports import CallerIdentity, ProviderCredentials

POLICY_HINT = "attach TransformerLabComputePolicy (README, 'IAM policy for a provider') to that IAM user"

_BY_CODE = {
    "InvalidClientTokenId": (
        "access_key_id",
        "AWS does not recognise this access key id: copy it again from IAM → Users → Security credentials, "
        "and check the key is Active and belongs to this AWS partition",
    ),
    "SignatureDoesNotMatch": (
        "secret_access_key",
        "the secret access key does not match the access key id: paste the secret that was shown when the key "
        "was created (create a new key if it is lost)",
    ),
    "ExpiredToken": ("session", "these are expired temporary credentials; use a long-lived IAM user key"),
    "AccessDenied": (
        "sts:GetCallerIdentity",
        f"the key is valid but its user may not call sts:GetCallerIdentity: {POLICY_HINT}",
    ),
    "AuthFailure": (
        "access_key_id",
        "AWS rejected these credentials: check the key id and secret, and that the key is Active",
    ),
}


class StsIdentityVerifier:
    def verify(self, credentials: ProviderCredentials, region: str) -> CallerIdentity:
        sts = aws.provider_client("sts", credentials, region)
        try:
            identity = sts.get_caller_identity()
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            check, message = _BY_CODE.get(
                code, ("sts:GetCallerIdentity", f"AWS rejected the credentials ({code or 'unknown error'})")
            )
            raise InvalidCredentials(check, f"Credential check failed ({check}): {message}") from None
        except (EndpointConnectionError, BotoCoreError) as error:
            raise UpstreamUnavailable(
                f"could not reach AWS STS in {region} to check the credentials ({type(error).__name__}); retry"
            ) from None
        self._probe_policy(credentials, region)
        return CallerIdentity(account_id=str(identity["Account"]), arn=str(identity["Arn"]))

    @staticmethod
    def _probe_policy(credentials: ProviderCredentials, region: str) -> None:
        """GetCallerIdentity needs no permission, so it cannot tell whether the policy is attached. A DryRun of
        ec2:DescribeKeyPairs (in the seed policy, free, changes nothing) can: AWS answers DryRunOperation when
        allowed and UnauthorizedOperation when not."""
        ec2 = aws.provider_client("ec2", credentials, region)
        try:
            ec2.describe_key_pairs(DryRun=True)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "DryRunOperation":
                return
            if code in {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}:
                raise InvalidCredentials(
                    "policy", f"Credential check failed (policy): the key works but may not call EC2: {POLICY_HINT}"
                ) from None
            if code in {"AuthFailure", "OptInRequired"}:
                raise InvalidCredentials(
                    "region",
                    f"Credential check failed (region): EC2 in {region} rejected the key ({code}); "
                    "check the region is enabled for this account",
                ) from None
            raise UpstreamUnavailable(f"could not check EC2 permissions in {region} ({code}); retry") from None
        except (EndpointConnectionError, BotoCoreError) as error:
            raise UpstreamUnavailable(
                f"could not reach EC2 in {region} to check the credentials ({type(error).__name__}); retry"
            ) from None
