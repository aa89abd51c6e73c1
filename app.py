#!/usr/bin/env python3
"""The ec2jobs CDK app. `cdk synth` / `cdk deploy` run it (cdk.json); `make synth` runs it directly — no CDK CLI,
no AWS credentials, no Docker — and writes cdk.out/.

Context (defaults in cdk.json; override with `cdk deploy -c name=value`): resourcePrefix, sshIngressCidr,
secretsPrefix, logRetentionDays, logChunkTtlDays, apiGatewayCloudWatchRole, stackName. See README, "Deploy".
"""

from __future__ import annotations

import sys

from stacks.app import main  # importing stacks first also quiets jsii's Node banners

if __name__ == "__main__":
    sys.exit(main())
