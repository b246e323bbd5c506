"""The shipped .streamlit/config.toml is what `streamlit run app.py` reads from the repository
root: usage statistics off, unexpected exceptions shown by type only (no traceback, no paths), and
no source-file watching (it walks every imported module after each new session's first run)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_streamlit_reads_the_shipped_config_from_the_repository_root(tmp_path):
    code = ("from streamlit import config; "
            "print(config.get_option('browser.gatherUsageStats'), config.get_option('client.showErrorDetails'), "
            "config.get_option('server.fileWatcherType'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # no user-level config
    assert out.stdout.split() == ["False", "type", "none"], out.stderr
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert elsewhere.stdout.split() == ["True", "full", "auto"]  # Streamlit's defaults: the file is what changes them
