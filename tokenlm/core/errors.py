"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class TokenlmError(Exception):
    """Base class: the message is complete and fit to show to the user as is."""


class ConfigError(TokenlmError):
    """A recipe or command-line option is wrong."""


class ArtifactError(TokenlmError):
    """An artifact is missing, incomplete, or does not match what it is used with."""


class AudioError(TokenlmError):
    """One audio file cannot be used; names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
