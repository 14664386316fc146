"""Run in a subprocess by test_ops_k8s_zenml.py, from a scratch source root: register the stack
that k8s/zenml-stack.sh registers (its recorded calls), compile the training and retraining
pipelines on it, and build every step Job with ZenML's own manifest builders. Writes JSON.

A separate process with its own ZenML store and repository: ZenML's Client and global config are
process-wide singletons, and activating a stack in the checkout would rewrite its .zen/config.yaml.

    python k8s_zenml_compile.py CALLS.jsonl OUT.json
"""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

ENTRYPOINT = "zenml.integrations.kubernetes.orchestrators.kubernetes_orchestrator_entrypoint"
CHILD_IMAGE = "registry.example.com/dtkd/zenml:training_pipeline-orchestrator"
SHORT = {"-o": "orchestrator", "-a": "artifact_store", "-c": "container_registry", "-i": "image_builder",
         "-e": "experiment_tracker", "-r": "model_registry"}


def register(calls):
    """The script's registrations, with the bucket artifact store replaced by a local one (s3fs /
    boto3 are not in the lock; the artifact store plays no part in compilation)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    client.create_secret("dtkd_mlflow", values={"username": "dtkd", "password": "not-a-password",
                                               "lock_url": "postgresql://mlflow:x@postgres-0.postgres:5432/mlflow"})
    stack = None
    for call in calls:
        if call[1:2] != ["register"]:
            continue
        if call[0] == "stack":
            stack = call[2]
            flags = dict(zip(call[3::2], call[4::2]))
            client.create_stack(name=stack, components={StackComponentType(SHORT[k]): v for k, v in flags.items()})
            continue
        kind = StackComponentType(call[0].replace("-", "_"))
        options = dict(arg[2:].split("=", 1) for arg in call[3:])
        flavor = options.pop("flavor")
        if kind == StackComponentType.ARTIFACT_STORE:
            flavor, options = "local", {}
        client.create_stack_component(name=call[2], flavor=flavor, component_type=kind, configuration=options)
    client.activate_stack(stack)
    return client.active_stack


def compile_pipeline(pipeline, config: str):
    pipeline = pipeline.with_options(config_path=config)
    pipeline._reconfigure_from_file_with_overrides(config_path=config)
    pipeline.prepare(**pipeline.configuration.parameters)
    snapshot, schedule, _ = pipeline._compile(config_path=config)
    return snapshot, schedule


def step_job(snapshot, step_name, settings, image):
    """As kubernetes_orchestrator_entrypoint builds it: build_pod_manifest -> build_job_manifest."""
    from kubernetes.client import ApiClient
    from zenml.entrypoints.step_entrypoint_configuration import StepEntrypointConfiguration
    from zenml.integrations.kubernetes import kube_utils
    from zenml.integrations.kubernetes.manifest_utils import (build_job_manifest, build_pod_manifest,
                                                               pod_template_manifest_from_pod)

    pod = build_pod_manifest(
        pod_name=None, image_name=image, command=StepEntrypointConfiguration.get_entrypoint_command(),
        args=StepEntrypointConfiguration.get_entrypoint_arguments(step_name=step_name, snapshot_id=uuid.uuid4()),
        env={"ZENML_STORE_URL": "http://zenml.dtkd.svc:8080"}, privileged=settings.privileged,
        pod_settings=kube_utils.apply_default_resource_requests(memory="400Mi", pod_settings=settings.pod_settings),
        service_account_name=settings.step_pod_service_account_name or settings.service_account_name,
        termination_grace_period_seconds=settings.pod_stop_grace_period, labels={"step_name": step_name})
    name = kube_utils.sanitize_label(f"abc12345-{step_name}-{snapshot.pipeline_configuration.name}")
    job = build_job_manifest(job_name=name, pod_template=pod_template_manifest_from_pod(pod),
                             backoff_limit=settings.backoff_limit_margin,
                             ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
                             active_deadline_seconds=settings.active_deadline_seconds, labels={"step_name": step_name})
    return {"apiVersion": "batch/v1", "kind": "Job", **ApiClient().sanitize_for_serialization(job)}


def orchestrator_pod(settings, image):
    from kubernetes.client import ApiClient
    from zenml.integrations.kubernetes.manifest_utils import build_pod_manifest

    pod = build_pod_manifest(pod_name="orchestrator", image_name=image, command=["python"],
                             args=["-m", ENTRYPOINT],
                             privileged=False, pod_settings=settings.orchestrator_pod_settings,
                             service_account_name=settings.service_account_name)
    return {"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(pod)}


def main(calls_path: str, out_path: str) -> None:
    from zenml.client import Client

    from pipelines.retraining import retraining_pipeline
    from pipelines.training import training_pipeline

    Client.initialize(root=Path.cwd())          # this scratch source root is the ZenML repository
    stack = register([json.loads(line) for line in Path(calls_path).read_text().splitlines()])
    out = {"stack": {"name": stack.name, "orchestrator": stack.orchestrator.flavor,
                     "namespace": stack.orchestrator.config.kubernetes_namespace,
                     "tracker": stack.experiment_tracker.name,
                     "tracking_uri": stack.experiment_tracker.config.tracking_uri}}
    for name, pipeline in {"training": training_pipeline, "retraining": retraining_pipeline}.items():
        snapshot, schedule = compile_pipeline(pipeline, f"{name}.yaml")
        settings = stack.orchestrator.get_settings(snapshot)
        steps = {n: s for n, s in snapshot.step_configurations.items()}
        docker = snapshot.pipeline_configuration.docker_settings
        # skip_build: the pods run the parent image itself (what KubernetesOrchestrator.get_image
        # returns from the build ZenML records for it); otherwise a name ZenML's builder would choose
        image = docker.parent_image if docker.skip_build else CHILD_IMAGE
        out[name] = {
            "steps": list(steps),
            "experiment_tracker": {n: s.config.experiment_tracker for n, s in steps.items()},
            "parent_image": docker.parent_image,
            "skip_build": docker.skip_build,
            "schedule": schedule.cron_expression if schedule else None,
            "jobs": {n: step_job(snapshot, n, stack.orchestrator.get_settings(s), image) for n, s in steps.items()},
            # the shape of any step pod the pipeline-level settings make (a dynamic pipeline's steps)
            "pipeline_level_job": step_job(snapshot, "check_data_version", settings, image),
            "orchestrator_pod": orchestrator_pod(settings, image),
        }
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
