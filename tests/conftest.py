"""Shared test set-up: nothing a test writes lands in the user's home folder."""
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """train_small.py keeps its caption-embedding cache under $XDG_CACHE_HOME; point it at a session temp dir
    (inherited by the subprocesses the tests start), shared by every test of the session."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
