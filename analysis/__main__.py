"""RepLens on the command line: ``python -m analysis <page> [options]``.

Every page's analysis runs headless with the page's own parameters (the same names as in its
share links), writing into the same result store, so the dashboard opens the result instantly.
Examples::

    python -m analysis similarity --model-a zoo:mlp-s0 --model-b zoo:cnn-s0 --measure linear_cka --out results/
    python -m analysis similarity --model-a hf:minilm --model-b hf:minilm-random --data text --report sim.html
    python -m analysis projections --method pca --proj-a net.fc2 --device cuda --out results/
    python -m analysis link "http://host:8501/similarity?a=zoo:mlp-s0&b=zoo:mlp-s1&measure=rbf_cka" --out r/

Outputs under ``--out``: one CSV per table, one Plotly JSON per figure, ``summary.json`` (the
headline numbers, the spec, model and data hashes) and ``link.txt`` (the view's query string).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from . import spec as spec_mod
from .spec import _num
from .errors import UserInputError

_OPTION_NAMES = {"a": "model-a", "b": "model-b"}
COMMAND_HELP = {
    "models": "both models' scores on the data and their layer tables",
    "similarity": "layer-by-layer similarity of A and B (and A-A, B-B) under one measure",
    "projections": "PCA / UMAP / t-SNE of a layer of A and of B, B aligned to A, and A through its layers",
    "functional-maps": "latent functional map, stitching, retrieval and robustness between a layer of A and of B",
    "vector-field": "latent dynamics of an autoencoder: attractors, memorization, the field, OOD scores",
    "attributions": "LRP relevance of A and B on the data: conservation, agreement, faithfulness",
    "sae": "sparse autoencoders on a layer of A and of B, their metrics and matched features",
}  # long names for the sidebar's one-letter keys


def _option(key: str) -> str:
    return "--" + _OPTION_NAMES.get(key, key.replace("_", "-"))


class TerminalProgress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False, stream=None):
        stream = sys.stderr if stream is None else stream  # this call's stderr, not the one at import
        self.quiet, self.stream = quiet, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start, self.last = time.time(), ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        fraction = min(max(float(fraction), 0.0), 1.0)
        bar = "#" * int(30 * fraction)
        line = f"[{bar:<30}] {100 * fraction:5.1f}% {time.time() - self.start:6.1f}s {message[:60]}"
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
        elif message != self.last:
            self.stream.write(line + "\n")
        self.last = line if self.tty else message
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.replace("``", "'"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run 'python -m analysis <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for page in COMMAND_HELP:
        p = sub.add_parser(page, help=COMMAND_HELP.get(page, f"the {page} page, headless"),
                           description=f"Compute the {page} page's analysis without the dashboard.")
        for param in spec_mod.params_of(page):
            kw = {"dest": param.key, "default": None, "metavar": param.kind.upper()}
            opts = param.options()
            extra = f" (one of: {', '.join(map(str, opts))})" if opts else ""
            rng = f" [{_num(param.lo)}, {_num(param.hi)}]" if param.lo is not None and param.hi is not None else ""
            default = "chosen from the models" if param.default is None else param.default
            if param.kind == "list":
                kw["nargs"] = "+"
            p.add_argument(_option(param.key), help=f"{param.help or param.key}{extra}{rng}; default: {default}", **kw)
        _common(p)
    link = sub.add_parser("link", help="run the view a share link describes (full or short form)")
    link.add_argument("url", help="a RepLens share link (or just its path and query, e.g. /similarity?measure=...)")
    _common(link)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and execution")
    g.add_argument("--out", type=Path, help="folder for CSV tables, figure JSON and summary.json")
    g.add_argument("--report", type=Path, help="also write a self-contained HTML report of the figures and tables")
    g.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the best available)")
    g.add_argument("--store", type=Path, help="result store folder (default: $REPLENS_STORE or the user cache)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--base-url", default=os.environ.get("REPLENS_BASE_URL"),
                   help="the dashboard's address (e.g. http://lab-server:8501), so link.txt holds a link that "
                        "opens; default: $REPLENS_BASE_URL")


def spec_from_args(args: argparse.Namespace) -> spec_mod.AnalysisSpec:
    if args.command == "link":
        parts = urlsplit(args.url)
        page = parts.path.rstrip("/").rsplit("/", 1)[-1] or "models"
        query = {k: (v if len(v) > 1 or k in _list_keys(page) else v[0])
                 for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if spec_mod.is_short_link(query):
            from .store import default_store

            found = spec_mod.resolve(query["a"], default_store())
            if found is None:
                raise UserInputError(f"The short link a={query['a']} is not in this store ({default_store().root}).")
            return found
        return spec_mod.AnalysisSpec.from_query(page, query, strict=True)[0]
    query = {}
    for param in spec_mod.params_of(args.command):
        value = getattr(args, param.key, None)
        if value is not None:
            query[param.key] = value
    return spec_mod.AnalysisSpec.from_query(args.command, query, strict=True)[0]


def _list_keys(page: str) -> set[str]:
    try:
        return {p.key for p in spec_mod.params_of(page) if p.kind == "list"}
    except UserInputError:
        return set()


def write_outputs(result, out: Path | None, report: Path | None, base_url: str | None = None) -> list[Path]:
    from . import report as report_mod
    from .views.outputs import report_items

    written = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, df in result.tables.items():
            path = out / f"{name}.csv"
            import pandas as pd

            df.to_csv(path, index=not isinstance(df.index, pd.RangeIndex))
            written.append(path)
        for name, fig in result.figures.items():
            path = out / f"{name}.json"
            path.write_text(fig.to_json())
            written.append(path)
        summary = {"spec": result.spec.to_json(), "numbers": result.numbers, "provenance": result.provenance,
                   "versions": report_mod.package_versions()}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "link.txt").write_text(_link_text(result.spec, base_url))
        written += [out / "summary.json", out / "link.txt"]
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(report_mod.build_html(report_items(result), f"RepLens · {result.spec.page}"))
        written.append(report)
    return written


def _link_text(spec, base_url: str | None) -> str:
    if base_url:
        return spec.url(base_url) + "\n"
    return (f"/{spec.page}?{spec.query_string()}\n"
            "# No dashboard address was given (--base-url or $REPLENS_BASE_URL): put this path after your "
            "RepLens server's address, e.g. http://localhost:8501\n")


def _show(value) -> str:
    """Numbers as a reader wants them (0.7234, not 0.7233999999999999)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.store is not None:
        os.environ["REPLENS_STORE"] = str(args.store)
    from . import jobs
    from .views.outputs import headless

    # The CLI runs on the user's own machine: their folders are fair game, and jobs run right here.
    os.environ.setdefault("REPLENS_ALLOW_LOCAL_PATHS", "1")
    jobs.set_executor(jobs.make_executor("inline"))
    bar = TerminalProgress(args.quiet)
    try:
        spec = spec_from_args(args)
        result = headless(spec, progress=bar, device=args.device)
    except UserInputError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    for name, value in result.numbers.items():
        print(f"{name}: {_show(value)}")
    for path in write_outputs(result, args.out, args.report, args.base_url):
        print(f"wrote {path}")
    print(f"view: /{spec.page}?{spec.query_string()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
