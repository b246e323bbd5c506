"""Server settings, read from environment variables where the server runs, on every call (a test
or an administrator can change a variable without restarting anything that imported this module).
One small function per setting, so the library, the pages and the tests read them the same way;
the README's "Deploying for a lab" lists them.

- ``REPLENS_SHARED_SERVER=1``: the app serves a lab (untrusted uploaders); stricter defaults below.
- ``REPLENS_CODE_UPLOADS=on|off``: accept uploads that are programs (TorchScript); default off on a
  shared server, else on. Accepted programs always run in the sandbox (analysis.models.sandbox).
- ``REPLENS_ALLOW_LOCAL_PATHS=1``: references may name folders on the server (off in the web app).
- ``REPLENS_ALLOW_HUB=1``: ``hf:org/name`` may be downloaded from the hub (off in the web app, on in
  the library and the CLI).
"""
from __future__ import annotations

import os

SHARED_SERVER_ENV = "REPLENS_SHARED_SERVER"
CODE_UPLOADS_ENV = "REPLENS_CODE_UPLOADS"
LOCAL_PATHS_ENV = "REPLENS_ALLOW_LOCAL_PATHS"
HUB_ENV = "REPLENS_ALLOW_HUB"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag(name: str, default: bool) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off (any case); unset gives ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return default


def shared_server() -> bool:
    """The app runs as a lab's shared server (``REPLENS_SHARED_SERVER=1``)."""
    return flag(SHARED_SERVER_ENV, False)


def code_uploads() -> bool:
    """Whether uploaded programs (TorchScript) are accepted: ``REPLENS_CODE_UPLOADS`` = on / off;
    unset means off on a shared server and on otherwise; an unrecognised value counts as off."""
    value = os.environ.get(CODE_UPLOADS_ENV)
    if value is None:
        return not shared_server()
    return value.strip().lower() in _TRUE


def local_paths_allowed() -> bool:
    """Whether references may name folders on the server (``hf:/local/folder``). Off by default: a
    link must not make the server read folders outside the result store."""
    return flag(LOCAL_PATHS_ENV, False)


allow_local_paths = local_paths_allowed


def hub_allowed(default: bool) -> bool:
    """Whether ``hf:org/name`` may be downloaded from the Hugging Face hub. The web app asks with
    ``default=False`` (a link must not make the server fetch from outside), the library and the CLI
    with ``default=True`` (a notebook user expects hub ids to work)."""
    return flag(HUB_ENV, default)
