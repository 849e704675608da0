"""The one exception type the CLI turns into a one-line message."""
from __future__ import annotations


class H36MError(ValueError):
    """A bad input file or folder: the message names the file and the problem, on one line."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")
