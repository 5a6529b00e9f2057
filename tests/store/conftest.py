"""The store's tests need no trained run: ``cfg`` is the tiny profile in an empty home."""

import pytest


@pytest.fixture
def cfg(chimed_home):
    from core.config import load_config

    return load_config("tiny")
