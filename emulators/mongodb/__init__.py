"""A MongoDB single-node replica-set emulator that real drivers (PyMongo, Motor) talk to.

It exists because no ``mongod`` can be installed on the development and CI machines; see
``/work/shared/EMULATOR-NOTES.md`` for what drivers need from it.
"""

from __future__ import annotations

from .server import MongoEmulator, ThreadedEmulator, run_in_thread

__all__ = ["MongoEmulator", "ThreadedEmulator", "run_in_thread"]
