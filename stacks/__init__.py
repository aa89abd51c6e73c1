"""The CDK stack of the ec2jobs control plane (app.py composes it; tests/infra tests its template).

Importing this package first keeps jsii quiet: the Node process behind aws-cdk-lib prints a large banner when
Node's major version is deprecated or end-of-life, which says nothing about the template. Set the variables
yourself to see it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def quiet_jsii() -> None:
    """Silence jsii's Node-version banners (read once, when the first aws_cdk import starts the Node process)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
    if "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION" in os.environ:
        return
    node = shutil.which("node")
    if node is None:
        return  # jsii will say that Node is missing, which is the message that matters
    try:
        version = subprocess.run(  # noqa: S603 - the node binary on PATH, fixed arguments
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    major = version.strip().lstrip("v").split(".")[0]
    if major.isdigit():
        os.environ["JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION"] = major


quiet_jsii()
