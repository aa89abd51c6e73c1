"""local/strict_ec2.py: what it relies on in moto (fails loudly if a moto upgrade moves it) and its rule."""

from __future__ import annotations

import inspect

import pytest
from moto.ec2.models.instances import Instance
from moto.ec2.responses.instances import InstanceResponse

from local.strict_ec2 import public_address_allowed


def test_moto_still_passes_the_request_public_address_choice_to_instance_init() -> None:
    parameters = list(inspect.signature(Instance.__init__).parameters)
    assert parameters[:5] == ["self", "ec2_backend", "image_id", "user_data", "security_groups"]
    assert '"associate_public_ip"' in inspect.getsource(Instance.__init__)
    assert '"associate_public_ip": self._get_param("AssociatePublicIpAddress")' in inspect.getsource(
        InstanceResponse.run_instances
    )


def test_moto_still_keeps_the_primary_public_address_on_the_first_interface() -> None:
    assert "self.nics[0].public_ip" in inspect.getsource(Instance.public_ip.fget)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("requested", "subnet", "allowed"),
    [
        (None, True, True),
        (None, False, False),
        (None, "false", False),
        (True, False, True),
        ("true", False, True),
        (False, True, False),
    ],
)
def test_an_explicit_request_decides_otherwise_the_subnet(requested: object, subnet: object, allowed: bool) -> None:
    assert public_address_allowed(requested, subnet) is allowed
