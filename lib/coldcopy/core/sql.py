"""Quoting for the SQL ColdCopy writes itself.  Pure: no I/O."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """``name`` as a quoted identifier ("" doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a string constant ('' doubled; standard_conforming_strings, as pg_restore sets)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(table: str) -> str:
    """``schema.table`` (as the manifest names tables) as a quoted, qualified name."""
    schema, name = table.split(".", 1)
    return f"{quote_ident(schema)}.{quote_ident(name)}"
