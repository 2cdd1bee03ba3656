"""What Prometheus would scrape from an operator's /metrics, and how much a figure grew."""
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(address: str | int) -> dict[tuple[str, tuple], float] | None:
    """The samples at HOST:PORT (a port alone: on 127.0.0.1)."""
    address = f"127.0.0.1:{address}" if isinstance(address, int) else address
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None  # not up yet
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def delta(after: dict, before: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)
