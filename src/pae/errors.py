"""One exception type for every mistake a user can make, so the CLI can print it as one actionable line."""


class PaeError(Exception):
    """A user-facing error: what is wrong and how to fix it.

    The CLI prints ``error: <problem> Fix: <fix>`` and exits non-zero; library callers can catch it.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem} Fix: {fix}")
        self.problem = problem
        self.fix = fix


class Preempted(Exception):
    """SIGTERM arrived: the state was saved at the next step boundary and the run stopped; rerun to resume."""
