"""The ``sous-client`` command line itself: help everywhere, options, the resume hint."""

from __future__ import annotations

import argparse
import io

import pytest

from sous_client import cli

COMMANDS = [
    [],
    ["submit"],
    ["submit", "transcode"],
    ["submit", "email"],
    ["submit", "fetch"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "watch"],
    ["jobs", "cancel"],
    ["jobs", "download"],
    ["presets"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "top")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sous-client")
    if command and command[0] != "submit" and command != ["jobs"]:
        assert "SOUS_API_KEY" in text
        assert "130  interrupted" in text


def parse(*words: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(words))


def test_common_options_go_before_or_after_the_command() -> None:
    before = parse("--json", "--url", "http://a:1", "jobs", "list")
    after = parse("jobs", "list", "--json", "--url", "http://a:1")
    assert (before.json, before.url) == (after.json, after.url) == (True, "http://a:1")
    assert parse("jobs", "list").json is False


def test_email_options_collect_repeats() -> None:
    args = parse("submit", "email", "--to", "a@x.org", "--to", "b@x.org", "--subject", "S",
                 "--text", "t", "--header", "X-A=1", "--header", "X-B=b=c")  # fmt: skip
    assert args.to == ["a@x.org", "b@x.org"]
    assert args.header == [("X-A", "1"), ("X-B", "b=c")]


@pytest.mark.parametrize(
    "words",
    [
        ["submit", "transcode", "a.mp4"],
        ["submit", "email", "--to", "a@x.org", "--subject", "S", "--header", "novalue"],
        ["submit", "fetch", "https://x/", "--wait", "--timeout", "-1"],
        ["jobs", "list", "--state", "done"],
        ["jobs", "list", "--limit", "0"],
    ],
)
def test_bad_command_lines_exit_2(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(words)
    assert exited.value.code == cli.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_a_batch_cannot_be_saved_to_one_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(
            [
                "submit",
                "fetch",
                "https://a/",
                "https://b/",
                "-o",
                "x",
                "--url",
                "http://127.0.0.1:9",
            ]
        )
    assert exited.value.code == cli.EXIT_USAGE
    assert "--output needs a single URL" in capsys.readouterr().err


def test_the_resume_hint_repeats_what_matters_and_never_the_key() -> None:
    args = parse(
        "--url", "http://api:8000", "--api-key", "sous_secret", "submit", "transcode",
        "my clip.mp4", "--preset", "audio-aac", "--wait", "-o", "out dir", "--json",
    )  # fmt: skip
    args.url_given = True
    hint = cli.resume_command(args, "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert hint == (
        "sous-client --url http://api:8000 jobs watch 1b4e28ba-2fa1-11d2-883f-0016d3cca427 "
        "--output 'out dir' --json"
    )
    args.url_given = False
    assert "--url" not in cli.resume_command(args, "1b4e28ba-2fa1-11d2-883f-0016d3cca427")


def test_text_goes_to_stdout_and_json_is_one_document() -> None:
    out = cli.Output(json_mode=True, stdout=io.StringIO(), stderr=io.StringIO())
    out.note("for humans")
    out.result({"a": 1}, "text")
    assert out.stdout.getvalue() == '{\n  "a": 1\n}\n'
    assert out.stderr.getvalue() == ""
    assert not out.bars
