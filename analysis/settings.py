"""Server settings, read from environment variables where the server runs, on every call (tests and
admins change them while a process runs). One small function per setting, so the library, the pages
and the tests read them the same way; the README's "Deploying for a lab" lists them.

- ``REPLENS_SHARED_SERVER=1``: the app serves a lab (untrusted uploaders); stricter defaults below.
- ``REPLENS_CODE_UPLOADS=on|off``: accept uploads that are programs (TorchScript); default off on a
  shared server, else on. Accepted programs always run in the sandbox (analysis.models.sandbox).
- ``REPLENS_ALLOW_LOCAL_PATHS=1``: references may name folders on the server.
"""
from __future__ import annotations

import os

SHARED_SERVER_ENV = "REPLENS_SHARED_SERVER"
CODE_UPLOADS_ENV = "REPLENS_CODE_UPLOADS"
LOCAL_PATHS_ENV = "REPLENS_ALLOW_LOCAL_PATHS"
_ON = {"1", "on", "true", "yes"}


def _flag(name: str) -> bool | None:
    """True / False for a recognised value, None when unset; anything else counts as off (fail closed)."""
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip().lower() in _ON


def shared_server() -> bool:
    """The app runs as a lab's shared server (``REPLENS_SHARED_SERVER=1``)."""
    return bool(_flag(SHARED_SERVER_ENV))


def code_uploads() -> bool:
    """Whether uploaded programs (TorchScript) are accepted: ``REPLENS_CODE_UPLOADS`` = on / off;
    unset means off on a shared server and on otherwise."""
    flag = _flag(CODE_UPLOADS_ENV)
    return (not shared_server()) if flag is None else flag


def allow_local_paths() -> bool:
    """Whether references may name folders on the server (``hf:/path``): off in the web app unless set."""
    return bool(_flag(LOCAL_PATHS_ENV))
