"""The control plane's stack: composes the constructs and names the outputs a deployment needs."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from stacks.api import Api
from stacks.artifacts import Artifacts
from stacks.events import Events
from stacks.functions import Functions
from stacks.relay_fleet import RelayFleet
from stacks.settings import Settings
from stacks.storage import Storage
from stacks.workflow import Workflow


class ControlPlaneStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            scope,
            construct_id,
            description="ec2jobs: serverless control plane that runs ML jobs on ephemeral EC2 instances",
            **kwargs,
        )
        Tags.of(self).add("ec2jobs:managed-by", "ec2jobs")
        storage = Storage(self, "Storage")
        functions = Functions(self, "Functions", storage=storage, settings=settings)
        # After the functions: InstanceTransferRole's trust policy names the Lambda roles that may assume it.
        artifacts = Artifacts(self, "Artifacts", settings=settings, transfer_role_users=functions.transfer_role_users)
        functions.use_artifacts(artifacts, settings)
        workflow = Workflow(
            self,
            "Workflow",
            steps=functions.steps,
            starters=[functions.api, functions.reconcile],
            settings=settings,
            jobs_table=storage.jobs,
        )
        fleet = RelayFleet(
            self,
            "RelayFleet",
            follow=functions.relay_shard,
            enroll=functions.steps["relay"],
            workflow=workflow.state_machine,
            settings=settings,
        )
        api = Api(self, "Api", handler=functions.api, authorizer=functions.authorizer, settings=settings)
        events = Events(
            self,
            "Events",
            publishers=functions.publishers,
            instance_events=functions.instance_events,
            reconcile=functions.reconcile,
            workflow=workflow.state_machine,
        )
        self.storage, self.functions, self.workflow, self.api, self.events = storage, functions, workflow, api, events
        self.artifacts, self.fleet = artifacts, fleet

        CfnOutput(self, "ApiUrl", value=api.url, description="the API's base URL (EC2JOBS_API_URL)")
        CfnOutput(
            self,
            "StateMachineArn",
            value=workflow.state_machine.state_machine_arn,
            description="the job workflow (one execution per job)",
        )
        CfnOutput(
            self,
            "EventBusName",
            value=events.bus.event_bus_name,
            description="Job State Change events out, Job Submission events in",
        )
        CfnOutput(self, "StateTableName", value=storage.state.table_name, description="teams, tokens, providers")
        CfnOutput(self, "JobsTableName", value=storage.jobs.table_name, description="jobs")
        CfnOutput(self, "LogsTableName", value=storage.logs.table_name, description="jobs' output")
        CfnOutput(
            self,
            "ArtifactBucketName",
            value=artifacts.bucket.bucket_name,
            description="uploads, outputs and checkpoints: teams/<team>/... (docs/artifacts.md)",
        )
        CfnOutput(
            self,
            "SecretsPrefix",
            value=settings.secrets_prefix,
            description="Secrets Manager names: <prefix>/teams/...",
        )
