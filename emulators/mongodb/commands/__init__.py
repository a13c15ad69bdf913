"""Command handlers; importing this package registers them in ``engine.COMMANDS``."""

from __future__ import annotations

from . import admin, crud, ddl

__all__ = ["admin", "crud", "ddl"]
