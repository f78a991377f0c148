"""SageMaker Model Monitor record preprocessor (uploaded by `mldeploy monitor setup`; runs inside
Model Monitor's analyzer, so it imports nothing of mldeploy).

It flattens one captured request body of our serving runtime ({"inputs": {name: rows}}, or
{"instances": [{name: value}]}) into one record per row, named as in our baseline: an input with one
value per row is `name`, n values `name[0]`..`name[n-1]`, more than 64 values `name:mean`, `name:std`.
"""

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # signatures quote their types: the analyzer's Python may predate list[...] at runtime
    from typing import Any

MAX_VALUES = 64


def _flat(value: "Any") -> "list[Any]":
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out.extend(_flat(v))
        return out
    return [value]


def _row(name: str, value: "Any", record: "dict[str, Any]") -> None:
    values = _flat(value)
    if not isinstance(value, list):
        record[name] = value
    elif len(values) > MAX_VALUES:
        numbers = [float(v) for v in values]
        mean = sum(numbers) / len(numbers)
        record[name + ":mean"] = mean
        record[name + ":std"] = math.sqrt(sum((v - mean) ** 2 for v in numbers) / len(numbers))
    else:
        for i, v in enumerate(values):
            record[f"{name}[{i}]"] = v


def rows(body: "Any") -> "list[dict[str, Any]]":
    """The feature records of one request body."""
    if isinstance(body, dict) and isinstance(body.get("instances"), list):
        instances = body["instances"]
    else:
        inputs = body.get("inputs", body) if isinstance(body, dict) else {"input": body}
        n = max((len(v) for v in inputs.values() if isinstance(v, list)), default=1)
        instances = [{k: (v[i] if isinstance(v, list) else v) for k, v in inputs.items()} for i in range(n)]
    records = []
    for instance in instances:
        record: dict[str, Any] = {}
        for name, value in (instance.items() if isinstance(instance, dict) else [("input", instance)]):
            _row(name, value, record)
        records.append(record)
    return records


def preprocess_handler(inference_record: "Any", logger: "Any" = None) -> "list[dict[str, Any]]":
    return rows(json.loads(inference_record.endpoint_input.data))
