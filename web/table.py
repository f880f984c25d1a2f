"""The summary under the results: a Markdown table with a column per photo, the photos that
failed, the settings and the time taken."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from inference.settings import PredictionSettings
from web.results import Failure, PhotoResult


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in the order they first appear: new columns of
    ``prediction_row`` show without changes here."""
    return list(dict.fromkeys(key for row in rows for key in row))


def summary_markdown(results: Sequence[PhotoResult], failures: Sequence[Failure],
                     settings: PredictionSettings, seconds: float) -> str:
    """The text panel: a table of the rows, the photos that failed, the settings and the time
    the server took."""
    parts = []
    if results:
        parts.append(markdown_table([result.row for result in results]))
    parts.extend(f"**Not segmented:** {escape(failure.message)}" for failure in failures)
    count = len(results)
    parts.append(f"{count} photo{'s' if count != 1 else ''} segmented in {seconds:.2f} s; "
                 f"{settings.describe()}.")
    return "\n\n".join(parts)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table with a column per photo (headed by its file name) and a line per
    field, underscores read as spaces: a photo's many fields read down, as a card does."""
    fields = [key for key in columns(rows) if key != "image"]
    lines = ["| | " + " | ".join(escape(readable(row.get("image"))) for row in rows) + " |",
             "|" + "|".join(" --- " for _ in range(len(rows) + 1)) + "|"]
    lines += ["| " + " | ".join([field.replace("_", " ")]
                                + [escape(readable(row.get(field))) for row in rows]) + " |"
              for field in fields]
    return "\n".join(lines)


def readable(value: Any) -> str:
    """A value of a row as the table shows it: floats to 4 significant digits, yes/no for
    booleans, nothing for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def escape(text: str) -> str:
    """``text`` shown literally in a Markdown table (file names may hold ``*`` or ``|``); an
    underscore inside a word is literal already."""
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)
