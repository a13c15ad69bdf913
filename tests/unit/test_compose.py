"""docker-compose.yml is valid Compose and its documented commands work as written, checked without Docker.

The file is interpolated the way Compose does it (the whole file, whichever service is started) with an
empty environment — a `${VAR:?…}` anywhere would make `docker compose up -d mongo` fail — and the result is
validated against the Compose specification's JSON schema (shipped by check-jsonschema, licence
Apache-2.0 in its `builtin_schemas/vendor/licenses/LICENSE.compose-spec`). The GitHub workflow also runs
`docker compose config` on it with a real Compose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

# Compose's interpolation syntax (compose-spec "Interpolation"): $$ escapes, $VAR, ${VAR}, and
# ${VAR:-default} ${VAR-default} ${VAR:?error} ${VAR?error} ${VAR:+replacement} ${VAR+replacement}.
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


class MissingVariable(Exception):
    """Raised where Compose would stop with "required variable ... is missing a value"."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """The file as Compose sees it with `env` as the environment (nested defaults are not used here)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["name"]
        op, arg = match["op"] or "", match["arg"] or ""
        unset = name not in env
        empty = unset or env[name] == ""
        missing = empty if op.startswith(":") else unset
        if op.endswith("?") and missing:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op.endswith("-") and missing:
            return arg
        if op.endswith("+"):
            return "" if missing else arg
        return env.get(name, "")

    return VARIABLE.sub(substitute, value)


def load(env: Mapping[str, str]) -> dict[str, Any]:
    model = YAML(typ="safe").load(COMPOSE.read_text())
    assert isinstance(model, dict)
    result = interpolate(model, env)
    assert isinstance(result, dict)
    return result


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == "x d  d $SET x"
    assert interpolate("${SET:+r}${EMPTY:+r}${EMPTY+r}", env) == "rr"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?set it}", env)
    with pytest.raises(MissingVariable):
        interpolate("${UNSET?set it}", env)


def test_the_file_needs_no_variable_and_matches_the_compose_schema() -> None:
    """`docker compose up -d mongo` with nothing exported (it used to need ABLY_API_KEY)."""
    model = load({})
    jsonschema.validate(model, get_builtin_schema("vendor.compose-spec"))
    required = re.search(r"\$\{[A-Za-z_]\w*:?\?", COMPOSE.read_text())
    assert not required, "a required variable fails every command, for every service"


def test_only_the_replica_set_starts_by_default_and_the_connector_on_request() -> None:
    services = load({})["services"]
    assert "profiles" not in services["mongo"]
    assert services["mongo"]["ports"] == ["27017:27017"]  # MONGODB_TEST_URI=mongodb://localhost:27017/…
    assert services["connector"]["profiles"] == ["connector"]  # `docker compose up connector` enables it
    assert services["connector"]["depends_on"]["mongo"]["condition"] == "service_healthy"


def test_the_connector_publishes_its_health_port_and_starts_without_a_key_only_to_report_it() -> None:
    connector = load({})["services"]["connector"]
    env = connector["environment"]
    assert env["ABLY_API_KEY"] == ""  # the connector exits 2 with "ABLY_API_KEY: required"
    assert f"{env['HTTP_PORT']}:{env['HTTP_PORT']}" in connector["ports"]
    assert "network_mode" not in connector  # a container sharing another's network cannot publish ports
    assert env["PIPELINE_FILE"].startswith("/pipelines/")  # the Dockerfile copies pipelines/ there
    assert (ROOT / "pipelines" / Path(env["PIPELINE_FILE"]).name).is_file()
    assert load({"ABLY_API_KEY": "a.b:c"})["services"]["connector"]["environment"]["ABLY_API_KEY"] == "a.b:c"
