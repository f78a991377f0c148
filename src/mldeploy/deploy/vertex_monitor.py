"""Vertex AI's model deployment monitoring job of an endpoint (alert policies: deploy/gcp_alerts.py).

    model deployment monitoring job "<endpoint>-monitoring" on the endpoint
        per deployed model (production, canaries): prediction drift detection, a threshold per input
        (monitoring.drift.jensen_shannon; the baseline names the inputs) and as the default
        request-response logging at monitoring.capture_sample_rate, every N hours (monitoring.drift.schedule)
        email alerts to monitoring.alerts.emails

Training-serving skew needs the training dataset in GCS or BigQuery, which mldeploy does not have:
drift only. The job covers the deployed models that exist now: run setup again after a deploy that
adds or replaces one (it then updates the job).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mldeploy.deploy import gcp
from mldeploy.deploy.gcp import translated
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import SetupPlan, cron_hours, load_baseline

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.deploy.vertex import VertexTarget

# what setup decides (labels are set at creation and not compared: they carry the commit)
FIELDS = ("model_deployment_monitoring_objective_configs", "model_deployment_monitoring_schedule_config",
          "logging_sampling_strategy", "model_monitoring_alert_config")


def monitoring_job(cfg: Config, endpoint: str, target: VertexTarget, current: dict[str, Any], result: SetupPlan) -> None:
    """Plan the model deployment monitoring job (drift of each deployed model, email alerts)."""
    from google.cloud import aiplatform_v1 as v1

    desired = _job(v1, cfg, endpoint, current)
    jobs = gcp.client(v1.JobServiceClient, target.creds, target.region)
    display = desired.display_name
    with translated(f"look up the Vertex AI monitoring job {display}"):
        found = [j for j in jobs.list_model_deployment_monitoring_jobs(
            request={"parent": target.parent, "filter": f'display_name="{display}"'}, retry=gcp.read_retry())
            if j.display_name == display]
    result.outputs["monitoring-job"] = found[0].name if found else display
    if not found:
        def create() -> None:
            with translated(f"create the Vertex AI monitoring job {display}"):
                made = jobs.create_model_deployment_monitoring_job(parent=target.parent,
                                                                   model_deployment_monitoring_job=desired)
            result.outputs["monitoring-job"] = made.name
        result.add("create", f"vertex model deployment monitoring job {display}", create, "deployed models",
                   new=sorted(current["slots"]))
        return
    old = v1.ModelDeploymentMonitoringJob.to_dict(found[0])
    new = v1.ModelDeploymentMonitoringJob.to_dict(desired)
    changed = [f for f in FIELDS if old.get(f) != new.get(f)]
    if changed:
        from google.protobuf import field_mask_pb2

        desired.name = found[0].name

        def update() -> None:
            with translated(f"update the Vertex AI monitoring job {display}"):
                operation = jobs.update_model_deployment_monitoring_job(
                    model_deployment_monitoring_job=desired, update_mask=field_mask_pb2.FieldMask(paths=changed))
            gcp.wait(operation, f"update the Vertex AI monitoring job {display}", cfg.deploy.gcp.wait_seconds)
        result.add("update", f"vertex model deployment monitoring job {display}", update, ", ".join(changed))


def _job(v1: Any, cfg: Config, endpoint: str, current: dict[str, Any]) -> Any:
    """The monitoring job as it should be."""
    monitoring = cfg.monitoring
    if monitoring.capture_sample_rate <= 0:
        raise UsageError("monitoring.capture_sample_rate is 0: Vertex AI's monitoring reads a sample of the "
                         "endpoint's requests", hint="set it to the share of requests to log, e.g. 0.1")
    hours, _ = cron_hours(monitoring.drift.schedule)
    threshold = v1.ThresholdConfig(value=monitoring.drift.jensen_shannon)
    baseline = load_baseline(cfg)
    inputs = sorted({f["input"] for f in baseline["features"]}) if baseline else []
    drift = v1.ModelMonitoringObjectiveConfig.PredictionDriftDetectionConfig(
        drift_thresholds=dict.fromkeys(inputs, threshold), default_drift_threshold=threshold)
    objectives = [v1.ModelDeploymentMonitoringObjectiveConfig(
        deployed_model_id=slot["id"],
        objective_config=v1.ModelMonitoringObjectiveConfig(prediction_drift_detection_config=drift))
        for _, slot in sorted(current["slots"].items())]
    alert = v1.ModelMonitoringAlertConfig(enable_logging=True)
    if monitoring.alerts.emails:
        alert.email_alert_config = v1.ModelMonitoringAlertConfig.EmailAlertConfig(user_emails=monitoring.alerts.emails)
    return v1.ModelDeploymentMonitoringJob(
        display_name=f"{endpoint}-monitoring"[:128], endpoint=current["name"],
        model_deployment_monitoring_objective_configs=objectives,
        model_deployment_monitoring_schedule_config=v1.ModelDeploymentMonitoringScheduleConfig(
            monitor_interval={"seconds": hours * 3600}),
        logging_sampling_strategy=v1.SamplingStrategy(random_sample_config=v1.SamplingStrategy.RandomSampleConfig(
            sample_rate=monitoring.capture_sample_rate)),
        model_monitoring_alert_config=alert, labels=gcp.labels(endpoint))
