"""Unit tests for mldeploy.github: step outputs, summary, annotations, masking and groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from mldeploy import github


@pytest.fixture
def files(tmp_path, monkeypatch):
    out = tmp_path / "github_output"
    summary = tmp_path / "step_summary"
    out.write_text("")
    summary.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    return out, summary


@pytest.fixture
def actions(files, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    return files


@pytest.fixture
def local(files, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    return files


def read_raw(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # keep \r as written
        return f.read()


def parse_outputs(text: str) -> dict[str, str]:
    """Parse a GITHUB_OUTPUT file the way the runner does: `k=v` lines and `k<<DELIM` heredocs."""
    result: dict[str, str] = {}
    lines = text.split("\n")
    assert lines[-1] == "", "file must end with a newline"
    lines = lines[:-1]
    i = 0
    while i < len(lines):
        line = lines[i]
        eq, heredoc = line.find("="), line.find("<<")
        if heredoc != -1 and (eq == -1 or heredoc < eq):
            name, delim = line[:heredoc], line[heredoc + 2:]
            assert name and delim
            body = []
            i += 1
            while True:
                assert i < len(lines), f"heredoc {delim!r} not closed"
                if lines[i] == delim:
                    break
                body.append(lines[i])
                i += 1
            result[name] = "\n".join(body)
        else:
            assert eq > 0, f"bad line {line!r}"
            result[line[:eq]] = line[eq + 1:]
        i += 1
    return result


# ---------------------------------------------------------------------------- in GitHub Actions

def test_in_actions(monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert github.in_actions()
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert not github.in_actions()
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert not github.in_actions()


def test_single_line_output(actions, capsys):
    out, _ = actions
    github.set_output("model-sha", "abc123")
    github.set_output("count", 3)
    github.set_output("empty", None)
    assert read_raw(out) == "model-sha=abc123\ncount=3\nempty=\n"
    assert capsys.readouterr().out == ""


def test_output_value_with_equals_sign(actions):
    out, _ = actions
    github.set_output("url", "https://x/?a=b&c=d")
    assert parse_outputs(read_raw(out)) == {"url": "https://x/?a=b&c=d"}


@pytest.mark.parametrize("value", [
    "line one\nline two",
    "trailing newline\n",
    "\nleading newline",
    "a\n\nblank line inside\n\n",
    "x=y\nz<<EOF\nEOF\nghadelimiter_fake\n",
])
def test_multi_line_output_round_trips(actions, value):
    out, _ = actions
    github.set_output("before", "1")
    github.set_output("report", value)
    github.set_output("after", "2")
    text = read_raw(out)
    header = next(line for line in text.split("\n") if line.startswith("report<<"))
    delim = header.removeprefix("report<<")
    assert delim and delim not in value
    assert parse_outputs(text) == {"before": "1", "report": value, "after": "2"}


def test_multi_line_output_delimiters_differ_per_call(actions):
    out, _ = actions
    github.set_output("a", "1\n2")
    github.set_output("b", "3\n4")
    headers = [line for line in read_raw(out).split("\n") if "<<" in line]
    assert len(headers) == 2
    assert headers[0].split("<<")[1] != headers[1].split("<<")[1]


def test_carriage_return_uses_heredoc(actions):
    out, _ = actions
    github.set_output("cr", "a\rb")
    text = read_raw(out)
    assert text.startswith("cr<<")
    assert parse_outputs(text) == {"cr": "a\rb"}


def test_output_appends_to_existing_file(actions):
    out, _ = actions
    out.write_text("earlier=step\n")
    github.set_output("later", "x")
    assert read_raw(out) == "earlier=step\nlater=x\n"


def test_summary_appends_markdown(actions):
    _, summary = actions
    summary.write_text("# Existing\n\n")
    github.add_summary("## Parity\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n\n")
    github.add_summary("done")
    assert read_raw(summary) == ("# Existing\n\n"
                                 "## Parity\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                                 "done\n\n")


def test_error_annotation_with_place_and_title(actions, capsys):
    github.error("parity failed", file="models/net.onnx", line=12, title="Parity")
    assert capsys.readouterr().out == "::error file=models/net.onnx,line=12,title=Parity::parity failed\n"


def test_annotation_escaping(actions, capsys):
    github.annotate("warning", "50% off\r\nnext: a,b",
                    file="dir,x/a:b%.yaml", line=3, title="T: a,b\n100%")
    out = capsys.readouterr().out
    assert out == ("::warning file=dir%2Cx/a%3Ab%25.yaml,line=3,title=T%3A a%2Cb%0A100%25"
                   "::50%25 off%0D%0Anext: a,b\n")


def test_annotation_without_properties(actions, capsys):
    github.warning("plain")
    github.annotate("notice", "n", file="f.py")
    assert capsys.readouterr().out == "::warning::plain\n::notice file=f.py::n\n"


def test_mask_each_non_empty_line(actions, capsys):
    github.mask("first-secret\n\n  \nsecond%secret\r\nthird")
    assert capsys.readouterr().out == ("::add-mask::first-secret\n"
                                       "::add-mask::second%25secret\n"
                                       "::add-mask::third\n")


def test_mask_empty_prints_nothing(actions, capsys):
    github.mask("")
    assert capsys.readouterr().out == ""


def test_group_wraps_output(actions, capsys):
    with github.group("Convert"):
        print("inside")
    assert capsys.readouterr().out == "::group::Convert\ninside\n::endgroup::\n"


def test_group_closes_when_body_raises(actions, capsys):
    with pytest.raises(RuntimeError, match="boom"), github.group("Failing"):
        print("before")
        raise RuntimeError("boom")
    assert capsys.readouterr().out == "::group::Failing\nbefore\n::endgroup::\n"


def test_group_title_is_escaped(actions, capsys):
    with github.group("50% done\nstep 2"):
        pass
    assert capsys.readouterr().out == "::group::50%25 done%0Astep 2\n::endgroup::\n"


# ---------------------------------------------------------------------------- outside Actions

def test_local_output_prints_and_leaves_file_alone(local, capsys):
    out, _ = local
    github.set_output("model-sha", "abc123")
    github.set_output("multi", "a\nb")
    captured = capsys.readouterr()
    assert captured.out == "model-sha: abc123\nmulti: a\nb\n"
    assert read_raw(out) == ""


def test_local_output_when_github_actions_is_not_true(files, monkeypatch, capsys):
    out, _ = files
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    github.set_output("x", "1")
    assert capsys.readouterr().out == "x: 1\n"
    assert read_raw(out) == ""


def test_in_actions_without_output_file_prints(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    github.set_output("x", "1")
    assert capsys.readouterr().out == "x: 1\n"


def test_local_mask_prints_nothing(local, capsys):
    github.mask("secret\nother")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_local_error_goes_to_stderr(local, capsys):
    github.error("parity failed", file="net.onnx", line=7, title="ignored")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: net.onnx:7: parity failed\n"


def test_local_annotation_place_variants(local, capsys):
    github.warning("w", file="only_file.py")
    github.annotate("notice", "n")
    assert capsys.readouterr().err == "warning: only_file.py: w\nnotice: n\n"


def test_local_summary_writes_nothing(local, capsys):
    _, summary = local
    github.add_summary("## Report")
    assert read_raw(summary) == ""
    assert capsys.readouterr().out == ""


def test_local_group_has_no_workflow_commands(local, capsys):
    with pytest.raises(ValueError), github.group("Title"):
        print("body")
        raise ValueError
    captured = capsys.readouterr()
    assert "::" not in captured.out + captured.err
    assert captured.out == "body\n"
    assert "Title" in captured.err
