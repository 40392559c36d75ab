"""The one error type users see: every bad input raises a subclass with a one-line message
naming the file and line or config key, what was found and what is allowed."""


class UserError(ValueError):
    """Bad input. The CLI prints the message as one line and exits with status 2."""


def first_line(e: BaseException) -> str:
    """An exception's first line of text, for a one-line message (its type name when it has no text)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
