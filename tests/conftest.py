"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP stalls while other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
