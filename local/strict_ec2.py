"""EC2 as strict as AWS where moto is kinder, applied inside the emulator process (local/emulator.py serve()).

- Public IPv4 at launch: AWS gives an instance launched without a subnet id into the default subnet a public IPv4
  address only when that subnet auto-assigns one (`MapPublicIpOnLaunch`) or the request asks for one on its network
  interface (https://docs.aws.amazon.com/vpc/latest/userguide/vpc-ip-addressing.html, "Public IPv4 addresses"). moto
  (5.x) assigns one whatever the subnet says. Here an instance whose request said nothing about a public address
  and whose subnet does not auto-assign one has none, so a test can turn auto-assign off on a default subnet and see
  what a user with such an account sees. tests/unit/test_moto_contract.py fails loudly if moto moves what this hooks.
"""

from __future__ import annotations

from typing import Any

_APPLIED: set[str] = set()


def public_address_allowed(requested: Any, subnet_auto_assigns: Any) -> bool:
    """Does an instance get a public IPv4 address at launch? (pure) An explicit request decides; otherwise the
    subnet's MapPublicIpOnLaunch does."""
    if requested is not None:
        return str(requested).lower() == "true"
    return str(subnet_auto_assigns).lower() == "true"


def apply() -> None:
    """Patch moto's EC2 Instance so the primary interface's public address follows the subnet, as on AWS."""
    if "public_ip" in _APPLIED:
        return
    from moto.ec2.models.instances import Instance

    original = Instance.__init__

    def init(self: Any, ec2_backend: Any, image_id: str, user_data: Any, security_groups: Any, **kwargs: Any) -> None:
        original(self, ec2_backend, image_id, user_data, security_groups, **kwargs)
        requested = kwargs.get("associate_public_ip")
        for nic in kwargs.get("nics") or []:
            if int(nic.get("DeviceIndex", -1)) == 0 and nic.get("AssociatePublicIpAddress") is not None:
                requested = nic["AssociatePublicIpAddress"]
        primary = self.nics.get(0)
        subnet = getattr(primary, "subnet", None)
        if primary is None or subnet is None:
            return
        if not public_address_allowed(requested, subnet.map_public_ip_on_launch):
            primary.public_ip = None
            primary.public_ip_auto_assign = False

    Instance.__init__ = init  # type: ignore[method-assign]
    _APPLIED.add("public_ip")
