"""The one exception type that reaches the user as a single line."""


class AgentdError(Exception):
    """A problem the user can fix; `str()` is one line that says what to do.

    The CLI prints it as `error: <message>` and exits with `exit_code`, never a traceback.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
