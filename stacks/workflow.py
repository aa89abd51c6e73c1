"""Workflow: the job's Standard state machine, deployed from the single definition in
controlplane.adapters.statemachine (the local runtime runs the same one). The definition is rendered with a
`${<step>_arn}` placeholder per step and the Lambda ARNs come in as definition substitutions, so the template's
definition string is `statemachine.definition(...)` itself."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from controlplane.adapters import statemachine
from stacks import nag
from stacks.settings import Settings

TIMEOUT = Duration.seconds(statemachine.EXECUTION_TIMEOUT_SECONDS)  # defined with the workflow


def substitution_key(step: str) -> str:
    return f"{step}_arn"


def deployed_definition(functions: Mapping[str, str]) -> dict[str, Any]:
    """statemachine.definition itself (its TimeoutSeconds included)."""
    return statemachine.definition(functions)


JOBS_TABLE_KEY = statemachine.JOBS_TABLE_PLACEHOLDER[2:-1]  # the jobs table's name: a substitution too


def definition_string() -> str:
    """The definition as deployed, with a substitution placeholder for each step's Lambda ARN and the jobs table."""
    placeholders = {step: "${" + substitution_key(step) + "}" for step in statemachine.HANDLERS}
    return json.dumps(deployed_definition(placeholders), indent=2)


class Workflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        steps: Mapping[str, lambda_.IFunction],
        starters: Sequence[lambda_.Function],
        settings: Settings,
        jobs_table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(self, "Logs", retention=settings.log_retention, removal_policy=RemovalPolicy.RETAIN)
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_string(definition_string()),
            definition_substitutions={substitution_key(step): fn.function_arn for step, fn in steps.items()}
            | {JOBS_TABLE_KEY: jobs_table.table_name},
            state_machine_type=sfn.StateMachineType.STANDARD,
            tracing_enabled=True,
            # Every event, but without inputs and outputs: a task spec's envs often carry tokens (HF_TOKEN, ...).
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        )
        # Invoke exactly these functions (their unqualified ARNs, as the definition names them).
        iam.Grant.add_to_principal(
            grantee=self.state_machine,
            actions=["lambda:InvokeFunction"],
            resource_arns=[fn.function_arn for fn in steps.values()],
        )
        # The relay-throttled note (statemachine.RELAY_THROTTLED_NOTE) is written by the state machine itself.
        iam.Grant.add_to_principal(
            grantee=self.state_machine, actions=["dynamodb:UpdateItem"], resource_arns=[jobs_table.table_arn]
        )
        for function in starters:
            self.state_machine.grant_start_execution(function)
            function.add_environment("STATE_MACHINE_ARN", self.state_machine.state_machine_arn)
        nag.acknowledge(
            self.state_machine.role,
            "AwsSolutions-IAM5",
            "Only the statements CDK adds for execution logging (logs:CreateLogDelivery, GetLogDelivery, "
            "UpdateLogDelivery, DeleteLogDelivery, ListLogDeliveries, PutResourcePolicy, DescribeResourcePolicies, "
            "DescribeLogGroups) and X-Ray tracing (xray:PutTraceSegments, PutTelemetryRecords, GetSamplingRules, "
            "GetSamplingTargets): AWS supports no resource-level permissions for these actions, so * is the only "
            "valid resource (tests/infra checks that no other action has it).",
            finding="Resource::*",
        )
