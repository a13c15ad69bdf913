"""The psycopg boundary: every psycopg exception becomes DatabaseUnavailable or SchemaError, by SQLSTATE."""

from __future__ import annotations

import inspect

import psycopg
import psycopg.errors
import pytest

from connector.errors import DatabaseUnavailable, SchemaError
from connector.sources.postgres.db import classify, mapped_errors


def all_psycopg_errors() -> list[type[psycopg.Error]]:
    found = {
        obj
        for module in (psycopg, psycopg.errors)
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, psycopg.Error)
    }
    return sorted(found, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", all_psycopg_errors(), ids=lambda cls: cls.__name__)
def test_every_psycopg_error_is_mapped(cls: type[psycopg.Error]) -> None:
    with pytest.raises((DatabaseUnavailable, SchemaError)), mapped_errors("testing"):
        raise cls("boom")


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (psycopg.errors.UndefinedTable, SchemaError),
        (psycopg.errors.UndefinedColumn, SchemaError),
        (psycopg.errors.InsufficientPrivilege, SchemaError),
        (psycopg.errors.InvalidSchemaName, SchemaError),
        (psycopg.errors.AdminShutdown, DatabaseUnavailable),
        (psycopg.errors.CannotConnectNow, DatabaseUnavailable),
        (psycopg.errors.SerializationFailure, DatabaseUnavailable),
        (psycopg.OperationalError, DatabaseUnavailable),
    ],
)
def test_classification_by_sqlstate_class(cls: type[psycopg.Error], expected: type[Exception]) -> None:
    error = classify(cls("detail"), "reading the outbox")
    assert type(error) is expected
    assert str(error).startswith("reading the outbox: detail")
