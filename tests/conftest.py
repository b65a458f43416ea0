"""Settings every test runs under."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: extra threads only add start-up cost and, on a busy
    machine, spin-waiting that made the suite several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing may be downloaded: a missing dataset must fail at once."""
    monkeypatch.setenv("NEMBED_OFFLINE", "1")
    monkeypatch.delenv("NEMBED_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(Path("/nonexistent-home-for-tests")))
