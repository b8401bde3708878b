import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# pytest-xdist (`-n auto`) runs one worker per core: each then gets its share of the cores, not all of them
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(scope="session")
def tiny_hosts():
    """One standalone host per tiny family, built once."""
    from scal_sdt.host.standalone import load_host

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_host(name, device="cpu")
        return cache[name]

    return get


@pytest.fixture(autouse=True, scope="session")
def _patient_gradio_launch():
    """Gradio's launch asks its own page once with a 3 s timeout (networking.url_ok) and refuses to start when that
    is slow; on two busy cores (CI, xdist workers) rendering the page can take longer. Ask as patiently as a user."""
    try:
        import httpx
        from gradio import networking
    except ImportError:
        yield
        return
    original = networking.url_ok

    def url_ok(url: str) -> bool:
        try:
            return httpx.head(url, timeout=60, verify=False).status_code in (200, 401, 301, 302, 303, 307, 308)
        except (httpx.ConnectError, httpx.TimeoutException):
            return original(url)

    networking.url_ok = url_ok
    yield
    networking.url_ok = original
