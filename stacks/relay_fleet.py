"""RelayFleet: the relay shards' Standard state machine (controlplane.adapters.statemachine.fleet_definition), one
execution per shard looping the shard function (docs/relay-fleet.md). The job workflow's Relay step (the enroll
function) starts shards; shards answer the job workflow's Relay tasks with their task tokens."""

from __future__ import annotations

import json

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from controlplane.adapters import statemachine
from stacks import nag
from stacks.settings import Settings

FOLLOW_KEY = "follow_arn"


def definition_string() -> str:
    """The fleet definition as deployed, with a substitution placeholder for the shard function's ARN."""
    return json.dumps(statemachine.fleet_definition("${" + FOLLOW_KEY + "}"), indent=2)


class RelayFleet(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        follow: lambda_.Function,
        enroll: lambda_.Function,
        workflow: sfn.StateMachine,
        settings: Settings,
    ) -> None:
        super().__init__(scope, construct_id)
        log_group = logs.LogGroup(self, "Logs", retention=settings.log_retention, removal_policy=RemovalPolicy.RETAIN)
        # Named, so the Relay step's grant and environment can name its ARN without referring to it (the job
        # workflow → Relay step → fleet → shard function → job workflow would be a circular dependency).
        stack = Stack.of(self)
        name = f"{stack.stack_name}-relay-fleet"
        self.state_machine_arn = stack.format_arn(
            service="states", resource="stateMachine", resource_name=name, arn_format=ArnFormat.COLON_RESOURCE_NAME
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=name,
            definition_body=sfn.DefinitionBody.from_string(definition_string()),
            definition_substitutions={FOLLOW_KEY: follow.function_arn},
            state_machine_type=sfn.StateMachineType.STANDARD,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=False),
        )
        iam.Grant.add_to_principal(
            grantee=self.state_machine, actions=["lambda:InvokeFunction"], resource_arns=[follow.function_arn]
        )
        # The Relay step starts a shard's execution when every live shard is full.
        iam.Grant.add_to_principal(
            grantee=enroll, actions=["states:StartExecution"], resource_arns=[self.state_machine_arn]
        )
        enroll.add_environment("RELAY_FLEET_ARN", self.state_machine_arn)
        # A shard reports each job's relay outcome (and heartbeats it) with the job workflow's task token, and tells
        # a superseded execution that another one follows the job.
        workflow.grant_task_response(follow)
        nag.acknowledge(
            self.state_machine.role,
            "AwsSolutions-IAM5",
            "Only the statements CDK adds for execution logging and X-Ray tracing: AWS supports no resource-level "
            "permissions for these actions (as for the job workflow's role).",
            finding="Resource::*",
        )
