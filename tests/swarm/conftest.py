import pytest

from .harness import Swarm


@pytest.fixture
async def swarm(tmp_path):
    s = Swarm(tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.close()
