"""House rules: analysis/ never imports streamlit; pages hold no numerics of their own."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_analysis_never_imports_streamlit():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "analysis").rglob("*.py")
                 if "streamlit" in imported_modules(p)]
    assert offenders == []


def test_pages_do_not_import_numerical_libraries_directly():
    heavy = {"torch", "sklearn", "scipy", "umap", "captum", "transformers"}
    offenders = {str(p.relative_to(ROOT)): imported_modules(p) & heavy for p in (ROOT / "pages").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_analysis_is_light():
    code = ("import sys, analysis, analysis.data, analysis.store; "
            "heavy = [m for m in ('torch', 'transformers', 'umap', 'streamlit') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
