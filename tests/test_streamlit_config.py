"""The shipped .streamlit/config.toml is what `streamlit run app.py` reads from the repository
root: usage statistics off, and unexpected exceptions shown by type only (no traceback, no paths)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_streamlit_reads_the_shipped_config_from_the_repository_root(tmp_path):
    code = ("from streamlit import config; "
            "print(config.get_option('browser.gatherUsageStats'), config.get_option('client.showErrorDetails'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # no user-level config
    assert out.stdout.split() == ["False", "type"], out.stderr
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert elsewhere.stdout.split() == ["True", "full"]  # Streamlit's defaults: the file is what changes them
