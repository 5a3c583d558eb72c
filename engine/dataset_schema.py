"""The versioned result format: :data:`SCHEMA_VERSION` and the JSON Schema shipped with eac.

``data/schema/explanation.schema.json`` (JSON Schema draft 2020-12) describes
every result eac writes:

- ``explanation.json`` of :meth:`Explanation.save <eac.engine.explanation.Explanation.save>`
  (the document itself, ``$defs/explanation``);
- the ``eac explain --json`` output (``$defs/cli_output``);
- a row of a dataset run's Parquet table, nested columns as JSON
  (``$defs/parquet_row``, see :mod:`eac.engine.dataset`);
- the run's ``summary.json`` (``$defs/summary``).

Every result carries ``schema_version``. Readers ignore fields they do not
know; the version is bumped when a reader of the old layout would misread the
new one. Validating needs the ``jsonschema`` package (not a runtime
dependency)::

    import jsonschema
    from eac.engine.dataset_schema import schema_for
    jsonschema.validate(row, schema_for("parquet_row"))
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Version of the result layout written in every result (``schema_version``).
SCHEMA_VERSION = 1
#: The JSON Schema file inside the package.
SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "schema" / "explanation.schema.json"
#: The kinds of result the schema describes (its ``$defs`` entries).
RESULT_KINDS = ("explanation", "cli_output", "parquet_row", "summary")


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The shipped JSON Schema (a fresh copy; the document validates ``explanation.json``)."""
    return json.loads(_schema_text())


def schema_for(kind: str) -> dict[str, Any]:
    """A standalone schema for one kind of result.

    Parameters
    ----------
    kind : {"explanation", "cli_output", "parquet_row", "summary"}

    Returns
    -------
    dict
        The shipped schema with its root pointing at ``$defs/<kind>``.

    Raises
    ------
    ConfigError
        Unknown ``kind``.
    """
    if kind not in RESULT_KINDS:
        raise ConfigError(f"unknown result kind {kind!r}; choose one of {', '.join(RESULT_KINDS)}")
    schema = copy.deepcopy(load_schema())
    schema["$ref"] = f"#/$defs/{kind}"
    return schema


def parquet_columns_table(arrow_schema: Any) -> str:
    """The README's table of a dataset run's columns: name and Arrow type from the table's schema,
    meaning from ``$defs/parquet_row`` of the JSON Schema (so the README cannot drift from either).

    Parameters
    ----------
    arrow_schema : pyarrow.Schema
        :func:`eac.engine.dataset.arrow_schema` (passed in: this module does not import pyarrow).

    Returns
    -------
    str
        A markdown table, one row per column, in table order.

    Raises
    ------
    ConfigError
        A column the JSON Schema does not describe.
    """
    described = load_schema()["$defs"]["parquet_row"]["properties"]
    rows = ["| column | type | meaning |", "| --- | --- | --- |"]
    for column in arrow_schema:
        meaning = described.get(column.name, {}).get("description")
        if not meaning:
            raise ConfigError(f"column {column.name!r} has no description in $defs/parquet_row of {SCHEMA_PATH.name}")
        rows.append(f"| `{column.name}` | `{column.type}` | {meaning} |")
    return "\n".join(rows)
