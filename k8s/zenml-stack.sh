#!/usr/bin/env bash
# Register dtkd's Kubernetes stack on a deployed ZenML server (run once per server; idempotent).
#
# A remote orchestrator needs, besides the cluster: a deployed ZenML server (`zenml login <url>`;
# k8s/base runs one), a remote artifact store, a container registry the cluster can pull from, and
# an image builder. The MLflow tracking server must be reachable from the pods: by default the one
# k8s/base runs, http://mlflow.dtkd.svc:5000 (PostgreSQL backend, proxied artifacts). GPU limits
# are not stack settings: they are pod settings in k8s/zenml-run-k8s.yaml.
#
# The steps take the experiment tracker of the active stack (steps/tracking.py: TRACKED), so the
# tracker's name here is free; tests/ops/test_ops_k8s_zenml.py replays this script's
# registrations and compiles both pipelines on the result, so the two cannot drift.
#
#   export DTKD_K8S_CONTEXT=my-cluster DTKD_ARTIFACT_URI=s3://my-bucket/zenml \
#          DTKD_REGISTRY_URI=ghcr.io/my-org
#   zenml secret create dtkd_mlflow --username=... --password=... \
#     --lock_url=postgresql://mlflow:<password>@postgres-0.postgres.dtkd.svc:5432/mlflow
#   # optional: MLFLOW_URI (default http://mlflow.dtkd.svc:5000)
#   bash k8s/zenml-stack.sh
set -euo pipefail

: "${DTKD_K8S_CONTEXT:?set DTKD_K8S_CONTEXT to the kubectl context of the cluster}"
: "${DTKD_ARTIFACT_URI:?set DTKD_ARTIFACT_URI (s3://..., gs://... or az://...)}"
: "${DTKD_REGISTRY_URI:?set DTKD_REGISTRY_URI (the container registry the cluster pulls from)}"
: "${MLFLOW_URI:=http://mlflow.dtkd.svc:5000}"   # as the pods reach it (k8s/base/mlflow.yaml)
NAMESPACE="${DTKD_K8S_NAMESPACE:-dtkd}"
STACK="${DTKD_STACK:-dtkd_k8s}"
export ZENML_ANALYTICS_OPT_IN=false

case "$DTKD_ARTIFACT_URI" in
  s3://*) STORE_FLAVOR=s3 ;;
  gs://*) STORE_FLAVOR=gcp ;;
  az://*|abfs://*) STORE_FLAVOR=azure ;;
  *) echo "DTKD_ARTIFACT_URI must be s3://, gs:// or az://, got $DTKD_ARTIFACT_URI" >&2; exit 2 ;;
esac

# Integration requirements (the flavors' own clients). Do NOT `zenml integration install kubernetes`
# or `great_expectations` into the project venv: their pins (kubernetes<26, great-expectations<1)
# conflict with constraints.txt, and both flavors register without them.
# DTKD_INSTALL_INTEGRATIONS=0 skips it (the offline test that replays this script).
if [ "${DTKD_INSTALL_INTEGRATIONS:-1}" != 0 ]; then
  zenml integration install "$STORE_FLAVOR" mlflow -y
fi

exists() { zenml "$1" describe "$2" >/dev/null 2>&1; }

exists orchestrator dtkd_k8s_orchestrator || zenml orchestrator register dtkd_k8s_orchestrator \
  --flavor=kubernetes --kubernetes_context="$DTKD_K8S_CONTEXT" --kubernetes_namespace="$NAMESPACE"
exists artifact-store dtkd_artifacts || zenml artifact-store register dtkd_artifacts \
  --flavor="$STORE_FLAVOR" --path="$DTKD_ARTIFACT_URI"
exists container-registry dtkd_registry || zenml container-registry register dtkd_registry \
  --flavor=default --uri="$DTKD_REGISTRY_URI"
exists image-builder dtkd_image_builder || zenml image-builder register dtkd_image_builder --flavor=local
# ZenML's MLflow tracker refuses a remote tracking URI without credentials: they come from the ZenML
# secret `dtkd_mlflow`, the same secret the team stack uses (pipelines/team_stack.py, steps/stack.py):
# username/password of an MLflow user (k8s/base's MLflow runs the basic-auth app, as the team
# stack's does) and lock_url, the PostgreSQL URL of the shared champion lock (DTKD_LOCK_URL: a
# promotion into a shared registry refuses without one).
zenml secret get dtkd_mlflow >/dev/null 2>&1 || {
  echo "create the ZenML secret first: zenml secret create dtkd_mlflow --username=... --password=... --lock_url=postgresql://..." >&2
  exit 2; }
exists experiment-tracker dtkd_mlflow_remote || zenml experiment-tracker register dtkd_mlflow_remote \
  --flavor=mlflow --tracking_uri="$MLFLOW_URI" \
  --tracking_username='{{dtkd_mlflow.username}}' --tracking_password='{{dtkd_mlflow.password}}'
exists model-registry dtkd_mlflow_registry_remote || zenml model-registry register dtkd_mlflow_registry_remote \
  --flavor=mlflow

exists stack "$STACK" || zenml stack register "$STACK" \
  -o dtkd_k8s_orchestrator -a dtkd_artifacts -c dtkd_registry -i dtkd_image_builder \
  -e dtkd_mlflow_remote -r dtkd_mlflow_registry_remote

echo "stack $STACK registered; run with:"
echo "  python -m dtkd_ops.runconfig configs/paper_hmdb51.yaml k8s/zenml-run-k8s.yaml -o /tmp/run-k8s.yaml"
echo "  zenml pipeline run pipelines.training.training_pipeline -c /tmp/run-k8s.yaml -s $STACK"
echo "  python -m pipelines.schedule -c /tmp/run-k8s.yaml -s $STACK    # the weekly retraining CronJob"
