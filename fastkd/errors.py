"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (path, name, layout, option), reported without a traceback.

    The message names the problem and, where there is one, the fix.
    """


class Diverged(UserError):
    """Training stopped because the loss (or a weight) became non-finite: ``epoch`` (1-based) and ``batch``
    say where. A multi-run command (``fastkd compare``) records such a cell as diverged and goes on."""

    def __init__(self, message: str, epoch: int, batch: int):
        super().__init__(message)
        self.epoch, self.batch = int(epoch), int(batch)


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
