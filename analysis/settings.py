"""Server settings, read from the environment on every call (tests and admins change them while a
process runs). One small function per setting; the README's "Deploying for a lab" lists them."""
from __future__ import annotations

import os

LOCAL_PATHS_ENV = "REPLENS_ALLOW_LOCAL_PATHS"


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


def allow_local_paths() -> bool:
    """Whether references may name folders on the server (``hf:/path``): off in the web app unless set."""
    return _flag(LOCAL_PATHS_ENV)
