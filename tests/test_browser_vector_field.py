"""The Vector field page in a real browser: a share link restores the view (autoencoder, section,
parameters), the figures draw, and a widget change lands in the address.

Needs playwright and Debian's Chromium (/usr/bin/chromium); never skipped when CI=true.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import browser as B  # noqa: E402

expect = B.expect
sync_playwright = B.sync_playwright
pytestmark = B.MARKS
RENDER_MS = 180_000


def test_vector_field_link_figures_and_url(page, server):
    base_url, proc = server
    page.goto(f"{base_url}/vector-field?vf_model=zoo%3Amlp-ae-memorize&vf_view=attractors&vf_starts=80"
              "&vf_noise=40&vf_steps=300")
    try:
        B.wait_rendered(page, RENDER_MS)
    except Exception as exc:
        raise AssertionError(f"page did not render: {exc}\n{B.server_log(proc)}")
    assert page.get_by_test_id("stException").count() == 0
    main = page.get_by_test_id("stMain")
    # the link's values were applied: the overfit autoencoder, the attractors section, 80 starts
    expect(main).to_contain_text("Memorization against its null")
    expect(main).to_contain_text("Attractor gallery")
    assert main.get_by_test_id("stNumberInput").filter(has_text="Data starts").locator("input").input_value() == "80"
    label = page.get_by_test_id("stMetricLabel").filter(has_text=re.compile(r"^\s*Memorization\s*$"))
    memo = main.get_by_test_id("stMetric").filter(has=label)
    assert float(memo.get_by_test_id("stMetricValue").inner_text()) > 0.99
    assert main.get_by_test_id("stImage").count() >= 4  # the gallery
    assert page.get_by_test_id("stPlotlyChart").count() >= 1

    # switch to the field: the address follows, the field and the convergence curves draw
    main.get_by_test_id("stRadio").filter(has_text="probing").get_by_text("field", exact=True).click()
    B.wait_rendered(page, RENDER_MS)
    expect(page).not_to_have_url(re.compile(r"vf_view="))  # the default section leaves the address
    expect(page).to_have_url(re.compile(r"[?&]vf_model=zoo(%3A|:)mlp-ae-memorize(&|$)"))
    expect(main).to_contain_text("the PCA plane of the training latents (32-D latent")
    expect(main).to_contain_text("Convergence")
    assert page.get_by_test_id("stPlotlyChart").count() >= 2
    main.get_by_test_id("stRadio").filter(has_text="Background").get_by_text("basins", exact=True).click()
    B.wait_rendered(page, RENDER_MS)
    expect(page).to_have_url(re.compile(r"[?&]vf_bg=basins(&|$)"))
    assert page.get_by_test_id("stException").count() == 0
