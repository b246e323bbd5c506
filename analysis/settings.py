"""Server settings read from environment variables (README, "Deploying for a lab").

Plain functions, read at each call, so a test or an administrator can change a variable without
restarting anything that imported this module.
"""
from __future__ import annotations

import os

LOCAL_PATHS_ENV = "REPLENS_ALLOW_LOCAL_PATHS"
HUB_ENV = "REPLENS_ALLOW_HUB"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(name: str, default: bool) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off (any case); anything else, or unset,
    gives ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return default


def local_paths_allowed() -> bool:
    """Whether the web app accepts ``hf:/local/folder`` references ($REPLENS_ALLOW_LOCAL_PATHS=1).
    Off by default: a link must not make the server read folders outside the result store."""
    return flag(LOCAL_PATHS_ENV, False)


def hub_allowed(default: bool) -> bool:
    """Whether ``hf:org/name`` may be downloaded from the Hugging Face hub ($REPLENS_ALLOW_HUB).
    The web app asks with ``default=False`` (a link must not make the server fetch from outside),
    the library and the CLI with ``default=True`` (a notebook user expects hub ids to work)."""
    return flag(HUB_ENV, default)
