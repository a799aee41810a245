"""The platform's settings with the load test's URLs (`bench/load_urls.py`).

Only `bench/load.py` serves these: the product never has the bare endpoint.
"""

from nbcloud.settings import *  # noqa: F403

ROOT_URLCONF = "bench.load_urls"
