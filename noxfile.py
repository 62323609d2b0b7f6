"""`nox -s tests` runs the suite in a fresh virtualenv, installed as the README says."""

import nox


@nox.session
def tests(session: nox.Session) -> None:
    session.install("torch==2.13.0")  # the CPU wheel first; a newer torch would pull CUDA wheels
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)
