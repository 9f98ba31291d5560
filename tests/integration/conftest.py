"""One real stack per test session: redis-server, the Alipay sandbox, local Ray, actors, gateway."""
import pytest
import pytest_asyncio

from tests.integration.stack import Sandbox, gateway, make_settings, processes, ray_cluster


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("paycell"))


@pytest.fixture(scope="session")
def stack_processes(stack_settings):
    with processes(stack_settings, ("--notify-delay-ms", "1000")) as started:
        yield started


@pytest.fixture(scope="session")
def stack_ray(stack_settings, stack_processes):
    from actors.factory import deploy
    with ray_cluster(stack_settings):
        deploy(stack_settings)
        yield


@pytest_asyncio.fixture(scope="session")
async def stack(stack_settings, stack_processes, stack_ray):
    async with gateway(stack_settings) as url:
        yield {"url": url, "settings": stack_settings, "processes": stack_processes,
               "sandbox": Sandbox(stack_settings)}
