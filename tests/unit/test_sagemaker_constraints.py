"""Our baseline (mldeploy-baseline/1) as SageMaker Model Monitor's statistics.json and constraints.json,
the cron -> SageMaker schedule rule, and the record preprocessor that names captured values as the
baseline does."""

from __future__ import annotations

import json
import types

import pytest

from mldeploy.config import DriftSection
from mldeploy.deploy import sagemaker_preprocessor
from mldeploy.deploy.sagemaker_monitor import analyzer_image, constraints, schedule_expression, statistics
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import cron_hours
from tests.helpers.monitoring import SAMPLE, baseline


def test_statistics_follow_model_monitors_schema():
    stats = statistics(baseline())
    assert stats["version"] == 0.0 and stats["dataset"] == {"item_count": 4000}
    by = {f["name"]: f for f in stats["features"]}
    x = by["x[0]"]
    assert x["inferred_type"] == "Fractional"
    num = x["numerical_statistics"]
    assert num["common"] == {"num_present": 3960, "num_missing": 40}
    assert num["mean"] == 0.1 and num["std_dev"] == 1.0 and num["min"] == -3.2 and num["max"] == 3.1
    assert num["sum"] == pytest.approx(396.0)
    kll = num["distribution"]["kll"]
    assert kll["buckets"][0] == {"lower_bound": -3.2, "upper_bound": -1.0, "count": 500}
    assert sum(b["count"] for b in kll["buckets"]) == 3960
    # the sample sits in the level whose weight (2^level) stands for the records: 3960 / 1000 -> 2^2
    assert kll["sketch"]["parameters"] == {"c": 0.64, "k": 2048.0}
    assert kll["sketch"]["data"][:2] == [[], []] and kll["sketch"]["data"][2] == sorted(SAMPLE)
    assert by["age"]["inferred_type"] == "Integral"
    # integer categories are captured as numbers: Model Monitor infers Integral, so they are numeric here
    color = by["color"]
    assert color["inferred_type"] == "Integral"
    assert color["numerical_statistics"]["mean"] == pytest.approx(0.7)
    assert [b["count"] for b in color["numerical_statistics"]["distribution"]["kll"]["buckets"]] == [2000, 1200, 800]
    city = by["city"]
    assert city["inferred_type"] == "String"
    assert city["string_statistics"]["common"] == {"num_present": 3600, "num_missing": 400}
    assert city["string_statistics"]["distinct_count"] == 3.0
    assert {"value": "paris", "count": 2160} in city["string_statistics"]["distribution"]["categorical"]["buckets"]
    json.dumps(stats, allow_nan=False)  # plain JSON, no NaN


def test_constraints_carry_types_completeness_domains_and_the_drift_threshold():
    cons = constraints(baseline(), DriftSection(jensen_shannon=0.2))
    by = {f["name"]: f for f in cons["features"]}
    assert by["x[0]"] == {"name": "x[0]", "inferred_type": "Fractional", "completeness": 0.99,
                          "num_constraints": {"is_non_negative": False}}
    assert by["age"]["num_constraints"] == {"is_non_negative": True}
    assert by["tier"]["string_constraints"] == {"domains": ["gold", "silver"]}
    assert "string_constraints" not in by["city"]  # values outside the top 50 exist: no closed domain
    assert by["city"]["completeness"] == 0.9
    assert cons["version"] == 0.0
    assert cons["monitoring_config"] == {
        "evaluate_constraints": "Enabled", "emit_metrics": "Enabled", "datatype_check_threshold": 1.0,
        "domain_content_threshold": 1.0,
        "distribution_constraints": {"perform_comparison": "Enabled", "comparison_threshold": 0.2,
                                     "comparison_method": "Robust"}}


@pytest.mark.parametrize("cron, expected", [("0 * * * *", "cron(0 * ? * * *)"), ("0 */6 * * *", "cron(0 0/6 ? * * *)"),
                                            ("0 3 * * *", "cron(0 3 ? * * *)")])
def test_schedule_becomes_sagemakers_cron(cron, expected):
    assert schedule_expression(cron) == expected


@pytest.mark.parametrize("cron", ["15 * * * *", "0 * * * 1", "0 1-5 * * *", "every hour", "0 */30 * * *"])
def test_schedules_sagemaker_cannot_run_are_refused(cron):
    with pytest.raises(UsageError, match=r"monitoring\.drift\.schedule"):
        cron_hours(cron)


def test_analyzer_image_is_the_regions():
    assert analyzer_image("eu-west-1") == "468650794304.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-model-monitor-analyzer"
    with pytest.raises(UsageError, match="no analyzer image in mars-1"):
        analyzer_image("mars-1")


def test_preprocessor_names_captured_values_like_the_baseline():
    body = {"inputs": {"x": [[1.0, 2.0], [3.0, 4.0]], "color": [2, 0], "img": [[0.0] * 100, [1.0] * 100]}}
    record = types.SimpleNamespace(endpoint_input=types.SimpleNamespace(data=json.dumps(body)))
    rows = sagemaker_preprocessor.preprocess_handler(record)
    assert rows == [{"x[0]": 1.0, "x[1]": 2.0, "color": 2, "img:mean": 0.0, "img:std": 0.0},
                    {"x[0]": 3.0, "x[1]": 4.0, "color": 0, "img:mean": 1.0, "img:std": 0.0}]
    assert sagemaker_preprocessor.rows({"instances": [{"x": [5, 6]}]}) == [{"x[0]": 5, "x[1]": 6}]
