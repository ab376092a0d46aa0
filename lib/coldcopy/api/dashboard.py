"""The dashboard page (``GET /``): one self-contained HTML file shipped with the package.

The page holds no data: it asks for the monitor token once, keeps it in the browser session
(``sessionStorage``), and reads ``status``, ``backups`` and ``alerts`` with it.  A link may carry
``#token=…`` once: the page moves it into the session and strips it from the address (a fragment
is never sent to a server).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files


@lru_cache(maxsize=1)
def page() -> str:
    return files("coldcopy.api").joinpath("dashboard.html").read_text(encoding="utf-8")
