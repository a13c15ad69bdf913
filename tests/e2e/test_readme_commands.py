"""Every command in the README's shell blocks runs here or is checked statically; none is unclassified.

Each command line of a ```sh block is listed in `CLASSIFIED` with how it is checked, so a new command in
the README fails `test_every_readme_command_is_classified` until someone decides. The kinds:

- `run`: executed here against the emulators, exactly as written except that what points at the user's
  systems is replaced (`MONGODB_URI`, `ABLY_API_KEY` → the emulators; `ABLY_REST_URL` added; a free
  `HTTP_PORT`). `export` lines (`env`) apply to the commands after them in the same block.
- `make`: a target that takes minutes (the suite, the demo, the bench): the target must exist in the
  Makefile, and the variables set before it must be read by the suite; the demo's own test runs `demo`.
- `compose`, `image`, `http`: need Docker: the services must exist in docker-compose.yml (validated by
  tests/unit/test_compose.py), the Dockerfile must exist, and the URL must be one the connector serves on
  a port the compose file publishes.
- `install`: `pip install .` from the checkout: pyproject.toml must declare the console script used next.
- `postgres`: needs a PostgreSQL server: the subcommand must exist and every variable must be a setting;
  tests/postgres runs `create-tables` and `check` against a real server.
- `settings`: an `export` of settings in a section's example (not the block run above): every variable
  is a setting, and the block's exports together load as a valid configuration (an API key added).
- `deadletter`: needs dead letters to act on: the line must parse with the connector's own parser (every
  subcommand and option exists); tests/integration and tests/postgres run each subcommand for real.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import tomllib
from typing import Any, Literal

import httpx
import pytest
from ruamel.yaml import YAML

from tests.conftest import ABLY_TEST_KEY
from tests.e2e.procs import ROOT

pytestmark = pytest.mark.e2e

Kind = Literal[
    "run", "env", "settings", "make", "compose", "image", "http", "install", "postgres", "deadletter"
]
README = ROOT / "README.md"
CONNECTOR = ROOT / ".venv" / "bin" / "livesync-connector"
COMMAND_TIMEOUT_S = 60.0  # `check` against the emulators takes about a second
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

TENANTS = "PIPELINE_FILE=pipelines/channel-per-tenant.json"
PG = "SOURCE=postgres POSTGRES_URI=postgresql://app@db/app ABLY_API_KEY=appId.keyId:secret livesync-connector"
CLASSIFIED: dict[str, Kind] = {
    # Set-up
    "make demo": "make",
    "make test": "make",
    "make demo-postgres": "make",
    # To run it against your own database
    "pip install .": "install",
    'export MONGODB_URI="mongodb://user:pass@db-0,db-1,db-2/?replicaSet=rs0"': "env",
    "export MONGODB_DATABASE=shop MONGODB_COLLECTION=orders": "env",
    "export PIPELINE_FILE=pipelines/channel-per-document.json": "env",
    'export ABLY_API_KEY="appId.keyId:secret"': "env",
    "livesync-connector check": "run",
    "livesync-connector": "run",
    # Deployment
    "ABLY_API_KEY=appId.keyId:secret docker compose up connector": "compose",
    "curl -fsS http://localhost:8080/readyz": "http",
    # The Postgres outbox source
    f"{PG} create-tables": "postgres",
    f"{PG} check": "postgres",
    PG: "postgres",
    # Watching the whole deployment
    f"export MONGODB_WATCH=deployment MONGODB_DATABASE=livesync {TENANTS}": "settings",
    "export NAMESPACE_INCLUDE='tenant_*.*' NAMESPACE_EXCLUDE='*.audit,tenant_test.*'": "settings",
    # Dead letters: list, inspect, replay
    "livesync-connector deadletter list --kind too_large --since 2h": "deadletter",
    "livesync-connector deadletter show 8264F1A2C7000000012B022C0100296E5A1004...": "deadletter",
    "livesync-connector deadletter replay --channel 'orders:*' --dry-run": "deadletter",
    "livesync-connector deadletter replay --all": "deadletter",
    "livesync-connector deadletter purge --replayed --yes": "deadletter",
    # Development and tests
    "make clients": "make",
    "make unit": "make",
    "make bench": "make",
    "make lock": "make",
    "docker compose up -d mongo": "compose",
    'MONGODB_TEST_URI="mongodb://localhost:27017/?replicaSet=rs0" make test': "make",
}
# What a comment on the same line may name instead of the command itself (`# or: docker build …`).
ALTERNATIVES: dict[str, Kind] = {"docker build -t livesync-connector .": "image"}


def shell_blocks() -> list[list[str]]:
    """The command lines of each ```sh block, comments and blank lines removed."""
    blocks = re.findall(
        r"^```(?:sh|bash|shell|console)\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL
    )
    return [[line for line in map(command_of, block.splitlines()) if line] for block in blocks]


def command_of(line: str) -> str:
    return " ".join(shlex.split(line, comments=True, posix=False)) if line.strip() else ""


def alternatives() -> list[str]:
    text = README.read_text()
    return [alt for alt in ALTERNATIVES if f"# or: {alt}" in text]


def test_every_readme_command_is_classified() -> None:
    commands = {command for block in shell_blocks() for command in block}
    assert commands - set(CLASSIFIED) == set(), "classify each new README command in CLASSIFIED"
    assert set(CLASSIFIED) - commands == set(), "a classified command is no longer in the README"
    assert alternatives() == list(ALTERNATIVES)


# ---- static checks ----


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def compose_services() -> dict[str, Any]:
    services = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    assert isinstance(services, dict)
    return services


def check_make(command: str) -> None:
    *assignments, make, target = shlex.split(command)
    assert make == "make" and target in make_targets(), command
    for assignment in assignments:
        name = assignment.split("=", 1)[0]
        assert name in (ROOT / "tests" / "conftest.py").read_text(), f"{name} is read by no test fixture"


def check_compose(command: str) -> None:
    words = shlex.split(command)
    words = words[words.index("docker") :]
    assert words[:3] == ["docker", "compose", "up"], command
    [service] = [word for word in words[3:] if not word.startswith("-")]
    assert service in compose_services(), command


def check_http(command: str) -> None:
    url = httpx.URL(shlex.split(command)[-1])
    assert url.host == "localhost"
    ports = compose_services()["connector"]["ports"]
    assert any(str(port).split(":")[0] == str(url.port) for port in ports), "the port is not published"
    assert f'b"{url.path}"' in (ROOT / "connector" / "health.py").read_text(), f"{url.path} is not served"


def check_install(command: str) -> None:
    assert shlex.split(command) == ["pip", "install", "."]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "livesync-connector" in scripts


def check_image(command: str) -> None:
    assert shlex.split(command)[:2] == ["docker", "build"] and command.endswith(" .")
    assert (ROOT / "Dockerfile").is_file()


def check_postgres(command: str) -> None:
    words = shlex.split(command)
    variables = [word.split("=", 1)[0] for word in words if "=" in word and word.split("=", 1)[0].isupper()]
    program_at = len(variables)
    assert words[program_at] == "livesync-connector"
    from connector.config import Settings

    for name in variables:
        assert name.lower() in Settings.model_fields, f"{name} is not a setting"
    subcommand = words[program_at + 1 :]
    result = subprocess.run(
        [str(CONNECTOR), *subcommand, "--help"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr


def check_deadletter(command: str) -> None:
    words = shlex.split(command)
    assert words[:2] == ["livesync-connector", "deadletter"], command
    from connector.cli import build_parser
    from connector.deadletter.commands import UsageError, selection_from

    args = build_parser().parse_args(words[1:])  # SystemExit(2) on an unknown subcommand or option
    try:
        selection_from(args)
    except UsageError as exc:
        raise AssertionError(f"{command}: {exc}") from exc


STATIC = {
    "make": check_make,
    "compose": check_compose,
    "http": check_http,
    "install": check_install,
    "image": check_image,
    "postgres": check_postgres,
    "deadletter": check_deadletter,
}


def test_settings_examples_load_as_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.config import Settings, load_settings

    monkeypatch.chdir(ROOT)  # a PIPELINE_FILE is relative to the checkout, as the README's examples are
    blocks = [[c for c in block if CLASSIFIED.get(c) == "settings"] for block in shell_blocks()]
    checked = 0
    for exports in filter(None, blocks):
        env = {"ABLY_API_KEY": "appId.keyId:secret"}
        for command in exports:
            for assignment in shlex.split(command)[1:]:
                name, _, value = assignment.partition("=")
                assert name.removesuffix("_FILE").lower() in Settings.model_fields, f"{name} is not a setting"
                env[name] = value
        settings = load_settings(env, env_file=None)
        assert settings.warnings == [], exports
        checked += 1
    assert checked, "no settings example in the README"


@pytest.mark.parametrize(
    "command",
    [c for c, kind in {**CLASSIFIED, **ALTERNATIVES}.items() if kind in STATIC],
)
def test_commands_that_cannot_run_here_are_checked_statically(command: str) -> None:
    STATIC[{**CLASSIFIED, **ALTERNATIVES}[command]](command)


# ---- the commands that run here ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_connector(args: list[str], env: dict[str, str]) -> None:
    """`livesync-connector` alone runs until stopped: ready as leader, then SIGTERM, exit 0."""
    with subprocess.Popen(
        [str(CONNECTOR), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            ready = False
            while not ready and time.monotonic() < deadline and proc.poll() is None:
                try:
                    reply = httpx.get(
                        f"http://127.0.0.1:{env['HTTP_PORT']}/readyz", timeout=2.0, trust_env=False
                    )
                    ready = reply.status_code == 200 and reply.json().get("role") == "leader"
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=STOP_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert ready, output
    assert proc.returncode == 0, output


def test_the_run_it_against_your_own_database_block_works_against_the_emulators(
    mongo_uri: str, ably_server: Any
) -> None:
    [block] = [block for block in shell_blocks() if "livesync-connector check" in block]
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME", "LANG", "TMPDIR")}
    ran = []
    for command in block:
        kind = CLASSIFIED[command]
        if kind == "env":
            for assignment in shlex.split(command)[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
            continue
        if kind != "run":
            continue
        # The user's systems → the emulators: everything else exactly as the README has it.
        here = {
            **env,
            "MONGODB_URI": mongo_uri,
            "ABLY_API_KEY": ABLY_TEST_KEY,
            "ABLY_REST_URL": ably_server.url,
            "ABLY_FALLBACK_HOSTS": "",
            "HTTP_PORT": str(free_port()),
        }
        args = shlex.split(command)[1:]
        if args:
            result = subprocess.run(
                [str(CONNECTOR), *args],
                cwd=ROOT,
                env=here,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            run_connector(args, here)
        ran.append(command)
    assert ran == ["livesync-connector check", "livesync-connector"]
    token = subprocess.run(
        [str(CONNECTOR), "token", "show"],
        cwd=ROOT,
        env=here,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert token.returncode == 0 and "shop" in token.stdout + token.stderr, token.stdout + token.stderr
