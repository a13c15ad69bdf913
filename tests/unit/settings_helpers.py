"""Settings from a base environment plus overrides, as the unit tests of each setting build them."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from connector.config import Settings, load_settings
from connector.errors import ConfigError


def load_with(base: Mapping[str, str], **overrides: str) -> Settings:
    return load_settings({**base, **overrides}, env_file=None)


def problems_with(base: Mapping[str, str], **overrides: str) -> list[str]:
    """The configuration problems of `base` with `overrides` (it must be refused)."""
    with pytest.raises(ConfigError) as info:
        load_with(base, **overrides)
    return info.value.problems
