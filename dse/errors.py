"""Owns the one exception type for mistakes a user can make (bad budget, bad TOML, missing files) and
the one-line form of another library's error inside its messages."""


class DseError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it.

    The CLI prints it on one line and exits with code 2, without a traceback.
    """


def one_line(exc: BaseException) -> str:
    """`Type: first sentence` of another library's exception, on one line (torch's messages run to
    paragraphs), for the reason part of a DseError."""
    text = first_sentence(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_sentence(text: str, most: int = 240) -> str:
    """The first sentence of `text` on one line, at most `most` characters."""
    text = " ".join(text.split()).split(". ")[0].rstrip(".")
    return text if len(text) <= most else text[: most - 3] + "..."


def first_line(text: object) -> str:
    """The first non-empty line of `text`, stripped ("" for none): the summary line of a multi-line
    message (DuckDB's errors add the query and a caret line below it)."""
    lines = str(text or "").strip().splitlines()
    return lines[0].strip() if lines else ""
