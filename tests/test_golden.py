"""The views give the numbers the pages gave before the refactor (issue #15): every CSV table under
tests/golden/<page>/ was written by the pre-refactor CLI for the page's default view, and the view's
default result must reproduce it (numbers to RTOL/ATOL, text exactly), as must the headline numbers of
its summary.json where there is one. A table a view no longer writes fails the test: nothing may
silently disappear. Where a page's defaults changed since (on purpose, said in the commit),
``link.txt`` holds the old default view's share link (an old link must still show the same numbers),
or spec.json names the parameters the golden numbers were written with."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.spec import AnalysisSpec
from analysis.views.outputs import headless

GOLDEN = Path(__file__).resolve().parent / "golden"
# The networks run in float32: another CPU's BLAS kernels (AVX2 against AVX-512), or a faster but
# equivalent order of operations (the LRP tracer's fused rescaling), moves their outputs by ~1e-8
# relative, and every number downstream with them. A refactor that changes what is computed moves
# them by far more than this.
RTOL, ATOL = 1e-6, 1e-9
PAGES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    """A table as the CLI writes it, read back (so both sides went through the same CSV round trip)."""
    import io

    keep_index = not isinstance(df.index, pd.RangeIndex)
    return pd.read_csv(io.StringIO(df.to_csv(index=keep_index)))


def _spec(page: str) -> AnalysisSpec:
    from urllib.parse import parse_qs

    link, pinned = GOLDEN / page / "link.txt", GOLDEN / page / "spec.json"
    if not link.exists():
        return AnalysisSpec(page, json.loads(pinned.read_text())["params"] if pinned.exists() else {})
    query = {k: v if len(v) > 1 else v[0] for k, v in parse_qs(link.read_text().split("?", 1)[1].strip()).items()}
    spec, problems = AnalysisSpec.from_query(page, query)
    assert problems == [], problems
    return spec


@pytest.mark.parametrize("page", PAGES)
def test_default_view_reproduces_the_pre_refactor_numbers(page):
    out = headless(_spec(page))
    summary = GOLDEN / page / "summary.json"
    if not (GOLDEN / page / "spec.json").exists():  # older summaries name numbers since renamed (issue 20)
        summary = GOLDEN / page / "none"
    for name, want in (json.loads(summary.read_text()).get("numbers", {}) if summary.exists() else {}).items():
        if isinstance(want, (int, float)):
            assert name in out.numbers, f"{page}: the view no longer reports {name!r}"
            assert out.numbers[name] == pytest.approx(want, rel=RTOL, abs=ATOL), f"{page}/{name}"
    for path in sorted((GOLDEN / page).glob("*.csv")):
        assert path.stem in out.tables, f"{page}: the view no longer produces the table {path.stem!r}"
        want, got = pd.read_csv(path), _frame(out.tables[path.stem])
        assert len(got) == len(want), path.stem
        for col in want.columns:
            assert col in got.columns, f"{page}/{path.stem}: column {col!r} is missing"
            a, b = want[col], got[col]
            if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
                np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=RTOL, atol=ATOL,
                                           err_msg=f"{page}/{path.stem}/{col}")
            else:
                assert list(b.astype(str)) == list(a.astype(str)), f"{page}/{path.stem}/{col}"
