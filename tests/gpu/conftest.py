"""GPU tests (marker ``gpu``; skipped without CUDA by tests/conftest.py). Their data folder is
built without ``datasets`` (:mod:`tests.gpu.corpus`), so they run on a bare GPU image."""

import pytest

from tests.training.fixtures import recipe  # noqa: F401  (fixture, uses data_root below)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from tests.gpu.corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("gpu_data"))
