"""deploy.azure.containerapps in mldeploy.yaml: what a Container Apps deploy is refused before it starts."""

from __future__ import annotations

import pytest

from mldeploy.config import ConfigError, load_config, require_deploy_keys
from mldeploy.errors import UsageError

BASE = "deploy:\n  cloud: azure\n  target: containerapps\n  azure:\n    containerapps:\n"


def load(tmp_path, settings: str):
    path = tmp_path / "mldeploy.yaml"
    path.write_text(BASE + "".join(f"      {line}\n" for line in settings.splitlines()))
    return load_config(path, environ={}), path


@pytest.mark.parametrize("settings, says", [
    ("secrets: {HF_TOKEN: hf-token}", "is not a Key Vault secret URL"),
    ("allowed_ips: [10.0.0.300/8]", "is not an IP range"),
    ("min_replicas: 5\nmax_replicas: 2", "max_replicas (2) is below min_replicas (5)"),
    ("environment: {PORT: \"9000\"}", "PORT is set by Container Apps itself"),
    ("environment: {MLDEPLOY_API_KEYS: k0123456789abcdef}", "keep them in Key Vault"),
    ("memory: 2GB", "memory"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, settings, says):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, settings)
    assert says in str(e.value)


def test_good_settings_load_and_the_environment_is_required_to_deploy(tmp_path):
    cfg, path = load(tmp_path, "secrets: {HF_TOKEN: \"https://acme-kv.vault.azure.net/secrets/hf\"}\n"
                               "allowed_ips: [203.0.113.0/24]")
    s = cfg.deploy.azure.containerapps
    assert (s.identity, s.min_replicas, s.allow_anonymous, s.allowed_ips) == ("system", 0, False, ["203.0.113.0/24"])
    with pytest.raises(UsageError) as e:
        require_deploy_keys(cfg, path)
    assert "deploy.azure.containerapps.managed_environment is not set" in e.value.message
    cfg, path = load(tmp_path, "managed_environment: ml-env")
    require_deploy_keys(cfg, path)
