"""``sous-client``: submit jobs to a Sous API, watch them with progress bars, download results.

Human-friendly on a terminal (progress bars on stderr when it is one), one JSON document
on stdout with ``--json``. The API and key come from ``--url``/``--api-key`` or the
``SOUS_URL``/``SOUS_API_KEY`` environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sous_client import protocol
from sous_client.client import Sous
from sous_client.errors import ConnectionFailed, SousError, Unauthorized, WaitTimeout
from sous_client.models import Job, JobState
from sous_client.progress import ProgressBar, format_bytes, format_duration

#: Exit statuses (also listed in ``--help``).
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_UNREACHABLE = 4
EXIT_WAIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

EPILOG = """\
environment:
  SOUS_URL       the API (default: http://127.0.0.1:8000)
  SOUS_API_KEY   your API key (sous keys create --tenant NAME)

exit status:
  0    done (a waited-for job succeeded)
  1    the job failed or was cancelled
  2    bad command line
  3    the API refused the request (the error's code and message are printed)
  4    the API could not be reached
  5    --timeout passed before the job finished (it keeps running)
  130  interrupted with Ctrl-C (a submitted job keeps running; the command to resume
       watching it is printed)
"""


class Interrupted(Exception):
    """Ctrl-C, with what to tell the user about the work left behind."""

    def __init__(self, message: str, job: Job | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job = job


@dataclass
class Output:
    """Where results, progress and notes go, decided once from ``--json`` and the terminal."""

    json_mode: bool
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def bars(self) -> bool:
        """Progress bars are drawn only on a terminal (stderr), also in ``--json`` mode."""
        return self.stderr.isatty()

    def result(self, document: Any, text: str | None) -> None:
        """The command's result: ``document`` as JSON with ``--json``, else ``text``."""
        if self.json_mode:
            self.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        elif text is not None:
            self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A remark for the human at the terminal (stderr, never in ``--json`` output)."""
        if not self.json_mode:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    def warn(self, text: str) -> None:
        """A message that matters in every mode (stderr)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()


def job_document(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


# -- progress while uploading, waiting, downloading ------------------------------------


class ByteProgress:
    """``on_progress(done, total)`` drawing a byte bar on a terminal, nothing elsewhere."""

    def __init__(self, out: Output, label: str) -> None:
        self.bar = ProgressBar(label, unit="bytes", stream=out.stderr) if out.bars else None

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(done, total)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()

    def abandon(self) -> None:
        if self.bar is not None:
            self.bar.abandon()


class JobProgress:
    """``on_progress(job)`` for ``wait``: a percent bar with the worker's ETA on a
    terminal; elsewhere one line per change of state (unless ``--json``)."""

    def __init__(self, out: Output, job: Job) -> None:
        self.out = out
        self.state: JobState | None = None
        self.bar = (
            ProgressBar(job.kind, unit="percent", total=100, stream=out.stderr)
            if out.bars
            else None
        )

    def __call__(self, job: Job) -> None:
        if self.bar is not None:
            self.bar.update(job.progress, 100, eta=protocol.eta_seconds(job))
            if job.is_terminal:
                self.finish()
        elif job.state is not self.state:
            self.out.note(f"job {job.id}: {job.state.value}")
        self.state = job.state

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()

    def abandon(self) -> None:
        if self.bar is not None:
            self.bar.abandon()


# -- shared steps ----------------------------------------------------------------------


def resume_command(args: argparse.Namespace, job: Job | str) -> str:
    """The command that picks up watching ``job`` where this one was interrupted."""
    ref = str(job.id) if isinstance(job, Job) else job
    words = ["sous-client"]
    if args.url_given:
        words += ["--url", args.url]
    words += ["jobs", "watch", ref]
    if getattr(args, "output", None):
        words += ["--output", str(args.output)]
    if getattr(args, "timeout", None) is not None:
        words += ["--timeout", f"{args.timeout:g}"]
    if args.json:
        words.append("--json")
    return shlex.join(words)


def watch(
    sous: Sous, args: argparse.Namespace, out: Output, job: Job
) -> tuple[Job, Path | None, int]:
    """Wait for ``job`` with progress, then download its output to ``--output`` if it
    succeeded; returns the final job, the file written and the exit status."""
    progress = JobProgress(out, job)
    try:
        job = sous.wait(job, timeout=args.timeout, on_progress=progress)
    except KeyboardInterrupt:
        progress.abandon()
        raise Interrupted(
            f"Stopped watching; job {job.id} keeps running. Resume with:\n"
            f"  {resume_command(args, job)}",
            job,
        ) from None
    except WaitTimeout:
        progress.abandon()
        raise
    progress.finish()
    path = None
    if job.succeeded and getattr(args, "output", None):
        path = download(sous, args, out, job)
    return job, path, EXIT_OK if job.succeeded else EXIT_JOB_FAILED


def download(sous: Sous, args: argparse.Namespace, out: Output, job: Job) -> Path:
    progress = ByteProgress(out, "downloading")
    try:
        path = sous.download(job, args.output, on_progress=progress)
    except KeyboardInterrupt:
        progress.abandon()
        command = shlex.join(["sous-client", "jobs", "download", str(job.id), "-o", args.output])
        raise Interrupted(
            f"Download interrupted; nothing was saved. Download again with:\n  {command}", job
        ) from None
    except BaseException:
        progress.abandon()
        raise
    progress.finish()
    return path


def report_finished(
    out: Output, job: Job, path: Path | None, status: int, extra: str | None = None
) -> int:
    document = job_document(job)
    if path is not None:
        document["output_path"] = str(path)
    lines = [f"Job {job.id} {job.state.value}{took(job)}."]
    if job.error is not None:
        lines.append(f"  {job.error.code}: {job.error.message}")
    if extra:
        lines.append(extra)
    if path is not None:
        lines.append(f"Saved {path} ({format_bytes(path.stat().st_size)}).")
    out.result(document, "\n".join(lines))
    return status


def took(job: Job) -> str:
    if job.finished_at is None:
        return ""
    started = job.started_at or job.created_at
    return f" in {format_duration((job.finished_at - started).total_seconds())}"


def submitted(sous: Sous, args: argparse.Namespace, out: Output, job: Job) -> int:
    """After a submission: wait if asked to, else print the job and how to follow it."""
    if args.wait:
        job, path, status = watch(sous, args, out, job)
        return report_finished(out, job, path, status, result_summary(job))
    hint = f"Watch it with:\n  {resume_command(args, job)}"
    out.result(job_document(job), f"Submitted {job.kind} job {job.id} ({job.state.value}).\n{hint}")
    return EXIT_OK


def result_summary(job: Job) -> str | None:
    """A line or two about what the job produced, for the human reader."""
    result = job.result or {}
    if job.kind == "transcode" and isinstance(result.get("output"), dict):
        output = result["output"]
        size = output.get("size_bytes")
        speed = result.get("speed")
        parts = [str(output.get("filename") or "output")]
        if isinstance(size, int):
            parts.append(format_bytes(size))
        if isinstance(speed, int | float):
            parts.append(f"encoded at {speed:.1f}x real time")
        return "  " + ", ".join(parts)
    if job.kind == "fetch" and "status_code" in result:
        return f"  HTTP {result['status_code']}, {format_bytes(result.get('size_bytes') or 0)}"
    if job.kind == "fetch_batch" and "succeeded" in result:
        return f"  {result['succeeded']} succeeded, {result.get('failed', 0)} failed"
    return None


# -- commands --------------------------------------------------------------------------


def cmd_submit_transcode(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    upload = ByteProgress(out, "uploading")
    is_file = not protocol.is_url(args.source)
    try:
        job = sous.submit_transcode(
            args.source,
            preset=args.preset,
            thumbnail_at=args.thumbnail_at,
            start=args.start,
            duration=args.duration,
            callback_url=args.callback_url,
            on_upload_progress=upload if is_file else None,
        )
    except KeyboardInterrupt:
        upload.abandon()
        raise Interrupted("Upload interrupted; nothing was submitted.") from None
    except BaseException:
        upload.abandon()
        raise
    if is_file:
        upload.finish()
    return submitted(sous, args, out, job)


def cmd_submit_email(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    text = Path(args.text_file).read_text() if args.text_file else args.text
    html = Path(args.html_file).read_text() if args.html_file else args.html
    job = sous.submit_email(
        args.to,
        args.subject,
        text=text,
        html=html,
        cc=args.cc,
        bcc=args.bcc,
        reply_to=args.reply_to,
        headers=dict(args.header),
        callback_url=args.callback_url,
    )
    return submitted(sous, args, out, job)


def cmd_submit_fetch(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    if len(args.urls) == 1:
        job = sous.submit_fetch(
            args.urls[0],
            store_body=args.store_body or bool(args.output),
            callback_url=args.callback_url,
        )
    else:
        if args.output:
            raise UsageError("--output needs a single URL (a batch's bodies are its children's)")
        job = sous.submit_fetches(
            args.urls, store_body=args.store_body, callback_url=args.callback_url
        )
    return submitted(sous, args, out, job)


def cmd_jobs_list(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    found: list[Job] = []
    jobs = sous.list(
        kind=args.kind,
        state=args.state,
        parent_id=args.parent_id,
        schedule_id=args.schedule_id,
        page_size=min(args.limit, 100),
    )
    for job in jobs:
        found.append(job)
        if len(found) >= args.limit:
            break
    rows = [
        (str(job.id), job.kind, job.state.value, f"{job.progress}%", job.created_at.isoformat())
        for job in found
    ]
    out.result([job_document(job) for job in found], table(rows) if rows else "No jobs.")
    return EXIT_OK


def table(rows: Sequence[tuple[str, ...]]) -> str:
    header = ("ID", "KIND", "STATE", "PROGRESS", "CREATED")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def cmd_jobs_show(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    job = sous.get(args.job_id)
    out.result(job_document(job), describe(job))
    return EXIT_OK


def describe(job: Job) -> str:
    fields: list[tuple[str, Any]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("state", f"{job.state.value} ({job.progress}%)"),
        ("attempts", job.attempts),
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("eta", job.eta_at),
        ("batch", job.parent_id),
        ("schedule", job.schedule_id),
    ]
    if job.error is not None:
        fields.append(("error", f"{job.error.code}: {job.error.message}"))
    if job.result is not None:
        fields.append(("result", json.dumps(job.result, default=str)[:400]))
    if job.webhook is not None:
        fields.append(("webhook", f"{job.webhook.state} after {job.webhook.attempts} attempt(s)"))
    return "\n".join(f"{name:<9} {value}" for name, value in fields if value is not None)


def cmd_jobs_watch(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    job, path, status = watch(sous, args, out, sous.get(args.job_id))
    return report_finished(out, job, path, status, result_summary(job))


def cmd_jobs_cancel(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    job = sous.cancel(args.job_id)
    verb = "cancelled" if job.state is JobState.CANCELLED else "asked to stop"
    out.result(job_document(job), f"Job {job.id} {verb} ({job.state.value}).")
    return EXIT_OK


def cmd_jobs_download(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    job = sous.get(args.job_id)
    path = download(sous, args, out, job)
    size = path.stat().st_size
    out.result(
        {"job_id": str(job.id), "path": str(path), "size_bytes": size},
        f"Saved {path} ({format_bytes(size)}).",
    )
    return EXIT_OK


def cmd_presets(sous: Sous, args: argparse.Namespace, out: Output) -> int:
    presets = sous.presets()
    width = max(len(preset.name) for preset in presets)
    out.result(
        [preset.model_dump(mode="json") for preset in presets],
        "\n".join(f"{preset.name:<{width}}  {preset.description}" for preset in presets),
    )
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------


class UsageError(Exception):
    """A command line that parses but cannot be carried out as given."""


def seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def header_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("give a header as NAME=VALUE")
    return name.strip(), value


def common_options(defaults: bool) -> argparse.ArgumentParser:
    """``--url``, ``--api-key`` and ``--json``, accepted before and after the command.

    Only the top-level parser sets defaults, so an option given before the command is
    not reset by the subcommand's parser.
    """
    parser = argparse.ArgumentParser(add_help=False)
    suppress = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--url",
        metavar="URL",
        help="the Sous API (default: $SOUS_URL, else http://127.0.0.1:8000)",
        **({"default": None} if defaults else suppress),
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="API key (default: $SOUS_API_KEY)",
        **({"default": None} if defaults else suppress),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout instead of text",
        **({"default": False} if defaults else suppress),
    )
    return parser


def add_wait_options(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends"
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (the job keeps running)",
    )
    if output:
        parser.add_argument(
            "-o",
            "--output",
            metavar="PATH",
            help="with --wait: download the output here (a file, or a folder to name it in)",
        )
    parser.add_argument(
        "--callback-url", metavar="URL", help="POST the finished job to this URL (signed)"
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    common = common_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="sous-client",
        description="Submit jobs to Sous, watch them with progress bars, download results.",
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common_options(defaults=True)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Callable[..., int], help_text: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            formatter_class=formatter,
            epilog=EPILOG,
            **kwargs,
        )
        sub.set_defaults(handler=handler)
        return sub

    submit = commands.add_parser(
        "submit", help="submit a transcode, email or fetch", description="Submit a job."
    )
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")

    transcode = command(
        kinds,
        "transcode",
        cmd_submit_transcode,
        "transcode a video file (uploaded with a progress bar) or URL",
    )
    transcode.add_argument("source", metavar="FILE_OR_URL", help="a local file or http(s) URL")
    transcode.add_argument(
        "--preset", required=True, help="output rendition, e.g. mp4-h264-720p (see: presets)"
    )
    transcode.add_argument("--thumbnail-at", type=seconds, metavar="SECONDS")
    transcode.add_argument("--start", type=seconds, metavar="SECONDS", help="trim: start here")
    transcode.add_argument("--duration", type=seconds, metavar="SECONDS", help="trim: keep this")
    add_wait_options(transcode)

    mail = command(kinds, "email", cmd_submit_email, "send an email")
    mail.add_argument("--to", action="append", required=True, metavar="ADDRESS")
    mail.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    mail.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    mail.add_argument("--subject", required=True)
    body = mail.add_mutually_exclusive_group()
    body.add_argument("--text", help="plain-text body")
    body.add_argument("--text-file", metavar="PATH", help="plain-text body from a file")
    html = mail.add_mutually_exclusive_group()
    html.add_argument("--html", help="HTML body")
    html.add_argument("--html-file", metavar="PATH", help="HTML body from a file")
    mail.add_argument("--reply-to", metavar="ADDRESS")
    mail.add_argument(
        "--header", action="append", type=header_pair, default=[], metavar="NAME=VALUE"
    )
    add_wait_options(mail, output=False)

    fetch = command(kinds, "fetch", cmd_submit_fetch, "fetch one URL, or several as one batch job")
    fetch.add_argument("urls", nargs="+", metavar="URL")
    fetch.add_argument("--store-body", action="store_true", help="keep the body for download")
    add_wait_options(fetch)

    jobs = commands.add_parser(
        "jobs", help="list, show, watch, cancel or download jobs", description="Your jobs."
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = command(actions, "list", cmd_jobs_list, "list your jobs, newest first")
    listing.add_argument("--kind", help="transcode, email, fetch or fetch_batch")
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument("--parent-id", metavar="JOB_ID", help="the jobs of this batch")
    listing.add_argument("--schedule-id", metavar="ID", help="the jobs this schedule made")
    listing.add_argument(
        "--limit", type=positive_int, default=20, help="show at most this many (default: 20)"
    )
    show = command(actions, "show", cmd_jobs_show, "show a job's state, result or error")
    show.add_argument("job_id", metavar="JOB_ID")
    follow = command(
        actions, "watch", cmd_jobs_watch, "follow a job with a progress bar until it ends"
    )
    follow.add_argument("job_id", metavar="JOB_ID")
    follow.add_argument("--timeout", type=seconds, metavar="SECONDS", help="give up after this")
    follow.add_argument(
        "-o", "--output", metavar="PATH", help="download the output here once it succeeded"
    )
    cancel = command(actions, "cancel", cmd_jobs_cancel, "cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    fetch_output = command(
        actions, "download", cmd_jobs_download, "download a succeeded job's output"
    )
    fetch_output.add_argument("job_id", metavar="JOB_ID")
    fetch_output.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=".",
        help="a file, or a folder to name it in (default: the current folder)",
    )
    command(commands, "presets", cmd_presets, "list the transcode presets")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.url_given = args.url is not None
    args.url = args.url or os.environ.get("SOUS_URL") or protocol.DEFAULT_URL
    out = Output(json_mode=args.json)
    handler: Callable[[Sous, argparse.Namespace, Output], int] = args.handler
    try:
        with Sous(args.url, args.api_key) as sous:
            return handler(sous, args, out)
    except Interrupted as exc:
        if exc.job is not None and out.json_mode:
            out.result(job_document(exc.job), None)
        out.warn(exc.message)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        out.warn("Interrupted.")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        parser.error(str(exc))
    except WaitTimeout as exc:
        document = exc.to_dict()
        document["job"] = job_document(exc.job)
        hint = f"{exc.message} Keep watching with:\n  {resume_command(args, exc.job)}"
        return fail(out, document, hint, EXIT_WAIT_TIMEOUT)
    except ConnectionFailed as exc:
        return fail(out, exc.to_dict(), f"error: {exc.message}", EXIT_UNREACHABLE)
    except SousError as exc:
        lines = [f"error: {exc}"]
        lines += [f"  {item.field}: {item.message}" for item in getattr(exc, "errors", [])]
        if exc.retry_after is not None:
            lines.append(f"  retry after {format_duration(exc.retry_after)}")
        if isinstance(exc, Unauthorized) and not (args.api_key or os.environ.get("SOUS_API_KEY")):
            lines.append("  set SOUS_API_KEY or pass --api-key (sous keys create --tenant NAME)")
        return fail(out, exc.to_dict(), "\n".join(lines), EXIT_API_ERROR)
    except OSError as exc:
        document = {"error": {"code": "local_error", "message": str(exc)}}
        return fail(out, document, f"error: {exc}", EXIT_USAGE)


def fail(out: Output, document: dict[str, Any], text: str, status: int) -> int:
    """Report an error: as the JSON document on stdout with ``--json``, else on stderr."""
    if out.json_mode:
        out.result(document, None)
    else:
        out.warn(text)
    return status
