"""Tests of the CDK app's synthesized template (stacks/, app.py): no AWS, no Docker, no CDK CLI."""

import stacks  # noqa: F401 - imported before any aws_cdk import: it quiets jsii's Node banners
