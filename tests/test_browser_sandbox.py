"""Uploaded TorchScript through the real upload widget (Playwright + Debian's Chromium): hostile
files that read /etc/passwd or a secret, or write files, get one message naming the operator, the
files are untouched and nothing they could have read is on the page; a benign autoencoder with
exported encode/decode is then accepted and the Models page evaluates it through the sandbox.

Needs playwright and Debian's Chromium (/usr/bin/chromium); never skipped when CI=true.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402
from tests import hostile_scripts as H  # noqa: E402

expect = B.expect
pytestmark = B.MARKS
RENDER_MS = 180_000


def _upload(page, path: Path) -> None:
    page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(str(path))


def test_hostile_torchscript_in_the_real_widget_then_a_benign_autoencoder(browser, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-b41d-never-on-the-page\n" * 4)
    existing = tmp_path / "existing.txt"
    existing.write_bytes(b"x" * 64)
    created = tmp_path / "created.bin"
    passwd = [ln for ln in Path("/etc/passwd").read_text().splitlines() if ln.strip()]
    files = {
        "passwd.pt": H.ReadFile("/etc/passwd", min(Path("/etc/passwd").stat().st_size, 64)),
        "secret.pt": H.ReadFile(str(secret), 64),
        "writes.pt": H.WriteFile(str(existing)),
        "creates.pt": H.OpensOnLoad(str(created)),
        "ae.pt": H.exported_ae(),
    }
    for name, module in files.items():
        (tmp_path / name).write_bytes(H.save(module))

    proc, base = B.start_server(store_dir=tmp_path / "store")
    try:
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        context.set_default_timeout(RENDER_MS)
        page = context.new_page()
        page.goto(base + "/")
        B.wait_rendered(page, RENDER_MS)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text("Upload a model or data").click()
        for name, expected in (("passwd.pt", "aten::from_file"), ("secret.pt", "aten::from_file"),
                               ("writes.pt", "aten::from_file"), ("creates.pt", "fails while loading")):
            _upload(page, tmp_path / name)
            alert = sidebar.get_by_test_id("stAlert").filter(has_text=name)
            expect(alert.first).to_contain_text(expected, timeout=90_000)
            B.wait_rendered(page, RENDER_MS)
            assert page.get_by_test_id("stException").count() == 0, B.server_log(proc)
            text = page.inner_text("body")
            assert "SECRET-b41d" not in text and not any(line in text for line in passwd), name
        assert existing.read_bytes() == b"x" * 64 and not created.exists()
        assert secret.read_text().startswith("SECRET-b41d")

        _upload(page, tmp_path / "ae.pt")
        main = page.get_by_test_id("stMain")
        expect(main).to_contain_text("TorchScript (run in a sandbox)", timeout=120_000)
        B.wait_rendered(page, RENDER_MS)
        assert page.get_by_test_id("stException").count() == 0, B.server_log(proc)
        expect(main).to_contain_text("Recon. MSE")
        expect(main).to_contain_text("reconstructions")
        context.close()
    finally:
        B.stop_server(proc)
