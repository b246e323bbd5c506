"""RepLens on the command line: ``python -m analysis <page> [options]``.

Every page's analysis runs headless with the page's own parameters (the same names as in its
share links), writing into the same result store, so the dashboard opens the result instantly.
Examples::

    python -m analysis similarity --model-a zoo:mlp-s0 --model-b zoo:cnn-s0 --measure linear_cka --out results/
    python -m analysis similarity --model-a hf:minilm --model-b hf:minilm-random --data text --report sim.html
    python -m analysis projections --method pca --proj-a net.fc2 --device cuda --out results/
    python -m analysis link "http://host:8501/similarity?a=zoo:mlp-s0&b=zoo:mlp-s1&measure=rbf_cka" --out r/
    python -m analysis sweep --models zoo:mlp-s0 zoo:mlp-s1 zoo:mlp-s2 --measures linear_cka procrustes --out s/
    python -m analysis sweep --checkpoints-of mlp-ae-b8 --ray auto --out dynamics/
    python -m analysis sweep --models zoo:mlp-s0 --sae-layer net.relu2 --sae-k 8 16 32 --sae-expansion 2 4

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
    "training-dynamics": "each checkpoint of a training run against the final model, and seeds against seeds",
    "merge": "permutation alignment, interpolation barrier, merged model, block swaps, crosscoder of A and B",
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
    _sweep_parser(sub)
    return parser


def _sweep_parser(sub) -> None:
    from .similarity import MEASURES

    p = sub.add_parser("sweep", help="a grid of analyses (model pairs x measures over layers, or SAE k x "
                                     "expansion), each cell cached like a single view",
                       description="Compute a grid of cells into the store: a similarity cell per model pair "
                                   "and measure (the Similarity view's layer-by-layer maps), or an SAE per k and "
                                   "expansion (the SAE page's). Cells already in the store are not recomputed. "
                                   "Writes sweep.csv (one row per cell and layer pair, or per SAE) under --out.")
    g = p.add_argument_group("the grid")
    g.add_argument("--models", nargs="+", default=[], metavar="REF", help="model references (zoo:…, hf:…, upload:…)")
    g.add_argument("--checkpoints-of", metavar="ZOO_NAME",
                   help="add a zoo model's training checkpoints and the model itself (e.g. mlp-ae-b8), compared "
                        "with the final model (--pairs to-last)")
    g.add_argument("--pairs", choices=sweep_pairings(), default=None,
                   help="which pairs of --models: all (default), consecutive, or to-last (each against the last)")
    g.add_argument("--measures", nargs="+", default=["linear_cka"], metavar="MEASURE",
                   help=f"similarity measures (one of: {', '.join(MEASURES)}); default: linear_cka")
    g.add_argument("--layers-a", nargs="+", metavar="LAYER", help="layers of the first model of each pair (default: all)")
    g.add_argument("--layers-b", nargs="+", metavar="LAYER", help="layers of the second model (default: all)")
    g.add_argument("--pooling", default="mean", help="pooling of token or spatial outputs (mean, first, flatten)")
    g.add_argument("--sae-layer", metavar="LAYER", help="an SAE grid on this layer of each --models model")
    g.add_argument("--sae-k", nargs="+", type=int, default=[16], metavar="K", help="active latents (topk SAEs)")
    g.add_argument("--sae-expansion", nargs="+", type=int, default=[4], metavar="E", help="expansion factors")
    g.add_argument("--sae-kind", default="topk", help="SAE kind (topk, batchtopk, relu, jumprelu)")
    g.add_argument("--sae-steps", type=int, default=300, help="training steps per SAE")
    d = p.add_argument_group("data (as in the sidebar)")
    for param in spec_mod.SIDEBAR:
        if param.key not in ("a", "b"):
            d.add_argument(_option(param.key), dest=param.key, default=param.default, help=param.help)
    _common(p, view=False)


def sweep_pairings() -> tuple:
    from .sweep import PAIRINGS

    return PAIRINGS


def _common(p: argparse.ArgumentParser, view: bool = True) -> None:
    """Options of every command; ``view``: also those of a view's outputs (report, device, link)."""
    g = p.add_argument_group("output and execution")
    g.add_argument("--out", type=Path, help="folder for CSV tables, figure JSON and summary.json")
    if view:
        g.add_argument("--report", type=Path, help="also write a self-contained HTML report of the figures and tables")
        g.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the best available)")
    g.add_argument("--store", type=Path, help="result store folder (default: $REPLENS_STORE or the user cache)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    if view:
        g.add_argument("--base-url", default=os.environ.get("REPLENS_BASE_URL"),
                       help="the dashboard's address (e.g. http://lab-server:8501), so link.txt holds a link that "
                            "opens; default: $REPLENS_BASE_URL")
    g.add_argument("--jobs", choices=("inline", "pool", "ray"), default="inline",
                   help="where the computation runs: in this process (default), a local pool of worker processes, "
                        "or a Ray cluster")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run on the Ray cluster at ADDRESS: auto (the cluster this machine joined with ray start), "
                        "host:6379 or ray://host:10001 (implies --jobs ray)")
    if not view:
        g.add_argument("--extract-on-cluster", action="store_true",
                       help="with Ray: extract every model's activations first as a Ray Data job (actors holding "
                            "the model, one per GPU), then compute the cells")


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


def make_executor(args: argparse.Namespace):
    """The executor --jobs / --ray ask for; None for this process (the default)."""
    from . import jobs

    kind = "ray" if args.ray else args.jobs
    return None if kind == "inline" else jobs.make_executor(kind, args.ray)


def wait(job, bar) -> None:
    """Follow a job to its end on the progress bar; a failure becomes the command's error."""
    from . import jobs

    while not job.wait(0.25):
        bar(job.fraction, job.message)
    if job.state != jobs.DONE:
        raise UserInputError(job.error or f"The job was {job.state}.")


def compute_on(executor, spec, bar) -> None:
    """Compute a view's missing sections as one job of ``executor`` (a Ray cluster, the local
    pool); the outputs are then read from the store."""
    from . import views

    if not views.has(spec.page):
        raise UserInputError(f"--jobs/--ray run views; the {spec.page} page is not one yet: run it without them.")
    task = views.get(spec.page).plan(spec).task
    if task is not None:
        wait(executor.submit(task), bar)


def sweep_cells(args: argparse.Namespace) -> list:
    from . import sweep
    from .similarity import MEASURES

    sidebar = {p.key: p.parse(getattr(args, p.key)) for p in spec_mod.SIDEBAR if p.key not in ("a", "b")}
    models = list(args.models)
    if args.checkpoints_of:
        from .zoo_manifest import checkpoints

        try:
            models += [f"zoo:{name}" for _, name in checkpoints(args.checkpoints_of)]
        except StopIteration:
            raise UserInputError(f"{args.checkpoints_of!r} is not a zoo model with checkpoints (try mlp-ae-b8).") from None
    if not models:
        raise UserInputError("Name the models of the grid (--models REF ...) or a checkpoint series (--checkpoints-of).")
    if args.sae_layer:
        data = (sidebar["data"], sidebar["n"], sidebar["seed"], sidebar["split"])
        return [cell for m in dict.fromkeys(models)
                for cell in sweep.sae_cells(m, args.sae_layer, args.sae_k, args.sae_expansion, data, args.pooling,
                                            kind=args.sae_kind, steps=args.sae_steps)]
    unknown = [m for m in args.measures if m not in MEASURES]
    if unknown:
        raise UserInputError(f"Unknown measure {unknown[0]!r}; measures: {', '.join(MEASURES)}.")
    how = args.pairs or ("to-last" if args.checkpoints_of else "all")
    return sweep.similarity_cells(sweep.pairs(models, how), args.measures, args.layers_a, args.layers_b,
                                  args.pooling, **sidebar)


def run_sweep(args: argparse.Namespace, executor, bar) -> int:
    from . import sweep

    cells = sweep_cells(args)
    done = sweep.run(cells, executor, bar, prefetch=args.extract_on_cluster)
    bar.close()
    where = executor.name if executor is not None else "this process"
    print(f"{done.cells} cells: {done.computed} computed, {done.cached} from the store, in {done.seconds:.1f} s "
          f"({where})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        sweep.table(cells).to_csv(args.out / "sweep.csv", index=False)
        summary = {"cells": done.cells, "computed": done.computed, "cached": done.cached, "seconds": done.seconds,
                   "backend": where, "grid": [cell.coords for cell in cells]}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"wrote {args.out / 'sweep.csv'}")
    return 0


CLI_ENV = ("REPLENS_STORE", "REPLENS_ALLOW_LOCAL_PATHS", "REPLENS_ALLOW_HUB")


def main(argv: list[str] | None = None) -> int:
    """The command line. The settings it gives itself are undone when it returns, so a caller in
    the same process (a notebook, a test, the web app) keeps its own rules for folders and the hub."""
    saved = {k: os.environ.get(k) for k in CLI_ENV}
    try:
        return _main(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.store is not None:
        os.environ["REPLENS_STORE"] = str(args.store)
    from . import jobs
    from .views.outputs import headless

    # The CLI runs on the user's own machine: their folders are fair game, and jobs run right here
    # unless --jobs or --ray sends them elsewhere.
    os.environ.setdefault("REPLENS_ALLOW_LOCAL_PATHS", "1")
    os.environ.setdefault("REPLENS_ALLOW_HUB", "1")
    jobs.set_executor(jobs.make_executor("inline"))
    bar = TerminalProgress(args.quiet)
    executor = None
    try:
        executor = make_executor(args)
        if args.command == "sweep":
            return run_sweep(args, executor, bar)
        spec = spec_from_args(args)
        if executor is not None:
            compute_on(executor, spec, bar)
        result = headless(spec, progress=bar, device=args.device)
    except UserInputError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if executor is not None:
            executor.shutdown()
    bar.close()
    for name, value in result.numbers.items():
        print(f"{name}: {_show(value)}")
    for path in write_outputs(result, args.out, args.report, args.base_url):
        print(f"wrote {path}")
    print(f"view: /{spec.page}?{spec.query_string()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
