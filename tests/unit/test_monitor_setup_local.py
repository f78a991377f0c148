"""`mldeploy monitor setup --cloud local`: nothing to create; the drift check's cron line and GitHub
Actions schedule, and a plain note (never a failure) when no Docker engine answers."""

from __future__ import annotations


def test_local_setup_prints_the_drift_schedule(mldeploy, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "mldeploy.yaml").write_text('deploy:\n  endpoint: demo\nmonitoring:\n  drift:\n    schedule: "0 3 * * *"\n')
    r = mldeploy("monitor", "setup", "--config", "mldeploy.yaml", cwd=tmp_path)
    assert r.code == 0, r.err
    assert f"cron: 0 3 * * * cd {tmp_path} && mldeploy monitor drift --config mldeploy.yaml" in r.out
    assert '- cron: "0 3 * * *"' in r.out and "command: monitor" in r.out
    assert "no Docker engine answered" in r.out and "capture was not checked" in r.out
    assert "drift-command: mldeploy monitor drift --config mldeploy.yaml" in r.out


def test_local_plan_is_written_as_json(mldeploy, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    (tmp_path / "mldeploy.yaml").write_text('deploy:\n  endpoint: demo\nmonitoring:\n  drift:\n    schedule: "0 * * * *"\n')
    r = mldeploy("monitor", "setup", "--plan", "--plan-out", tmp_path / "plan.json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert '"cloud": "local"' in (tmp_path / "plan.json").read_text()
