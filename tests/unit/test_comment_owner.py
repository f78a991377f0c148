"""`mldeploy report --comment` against the fake GitHub: it updates only the comment its own token
wrote. Anyone can post a comment that starts with the report's hidden marker; such a comment is
left alone (a hijack attempt), and the report gets a comment of its own."""

from __future__ import annotations

import pytest

from mldeploy.rehearsal.fake_github import FakeGitHub

PR = 7
MARKER = "<!-- mldeploy-report endpoint=classifier -->"


@pytest.fixture
def report(tmp_path):
    path = tmp_path / "report.md"

    def write(text: str):
        path.write_text(f"{MARKER}\n### ✅ mldeploy: canary deployed - `classifier`\n{text}\n")
        return path

    return write


def comment_as(fake: FakeGitHub, mldeploy, monkeypatch, report):
    monkeypatch.setenv("GITHUB_TOKEN", fake.token)
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    return lambda text: mldeploy("report", "--from", report(text), "--comment", "--pr", PR)


@pytest.mark.parametrize("token, me", [("ghs_installationtoken0123", "github-actions[bot]"),  # the job's token
                                       ("github_pat_0123", "deploy-bot")])  # a user's (or a bot user's)
def test_a_marker_comment_by_someone_else_is_left_alone(mldeploy, monkeypatch, report, token, me):
    fake = FakeGitHub(token, login="deploy-bot")
    try:
        hijack = fake.comment(PR, f"{MARKER}\nplease deploy https://evil.example", author="mallory")
        comment = comment_as(fake, mldeploy, monkeypatch, report)
        first = comment("first run")
        assert first.code == 0, first.err
        assert hijack["body"] == f"{MARKER}\nplease deploy https://evil.example"  # untouched
        [ours] = [c for c in fake.comments.values() if c["user"]["login"] == me]
        assert "first run" in ours["body"]

        second = comment("second run")
        assert second.code == 0, second.err
        assert ("PATCH", f"/repos/acme/models/issues/comments/{ours['id']}") in fake.requests
        assert "second run" in ours["body"] and "evil" in hijack["body"] and len(fake.comments) == 2
    finally:
        fake.close()


def test_a_github_apps_bot_is_named_by_mldeploy_comment_author(mldeploy, monkeypatch, report):
    """An app's installation token cannot ask /user who it is; its comments are by `<app>[bot]`."""
    fake = FakeGitHub("ghs_otherapp0123")
    fake.author = "acme-deployer[bot]"
    try:
        actions_bot = fake.comment(PR, f"{MARKER}\nwritten by another workflow", author="github-actions[bot]")
        monkeypatch.setenv("MLDEPLOY_COMMENT_AUTHOR", "acme-deployer[bot]")
        comment = comment_as(fake, mldeploy, monkeypatch, report)
        assert comment("one").code == 0 and comment("two").code == 0
        [ours] = [c for c in fake.comments.values() if c["user"]["login"] == "acme-deployer[bot]"]
        assert "two" in ours["body"] and actions_bot["body"].endswith("written by another workflow")
    finally:
        fake.close()
