"""Headless runs of a page's analysis from its AnalysisSpec: the CLI's engine.

A runner computes what its page shows, with the page's own library calls and parameters, so the
results land under the same store keys: a view computed by the CLI opens instantly in the
dashboard, and the numbers agree. Each returns a :class:`PageResult` of named figures, tables and
headline numbers, which the CLI writes to files and, on request, to an HTML report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import UserInputError
from .spec import AnalysisSpec

Progress = Callable[[float, str], None]


@dataclass
class PageResult:
    spec: AnalysisSpec
    figures: dict = field(default_factory=dict)  # name -> plotly Figure
    tables: dict = field(default_factory=dict)  # name -> pandas DataFrame
    numbers: dict = field(default_factory=dict)  # name -> float / str (summary.json)
    provenance: dict = field(default_factory=dict)


def _inputs(spec: AnalysisSpec):
    from . import data, models

    p = spec.params
    ds = data.load(p["data"], n=p["n"], seed=p["seed"], split=p["split"])
    model_a, model_b = models.load(p["a"]), models.load(p["b"])
    model_a.check_data(ds)
    model_b.check_data(ds)
    prov = {"model_a": {"ref": p["a"], "sha256": model_a.sha256}, "model_b": {"ref": p["b"], "sha256": model_b.sha256},
            "data": {"name": p["data"], "rows": len(ds), "sha256": ds.sha256}}
    return ds, model_a, model_b, prov


def _layers(model, wanted, what: str) -> list[str]:
    if not wanted:
        return list(model.layers)
    missing = [w for w in wanted if w not in model.layers]
    if missing:
        raise UserInputError(f"{what}: no layer {missing[0]!r}; layers are {', '.join(model.layers)}.")
    return list(wanted)


def run_projections(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    import pandas as pd

    from . import figures
    from . import projection as proj
    from .activations import extract

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layer_a = p.get("proj_a") or model_a.layers[-1]
    layer_b = p.get("proj_b") or model_b.layers[-1]
    _layers(model_a, [layer_a], "proj_a")
    _layers(model_b, [layer_b], "proj_b")
    params = ({"n_neighbors": p["umap_k"], "min_dist": p["umap_d"]} if p["method"] == "umap"
              else {"perplexity": p["perplexity"]} if p["method"] == "tsne" else {})
    xa = extract(model_a, ds, [layer_a], device=device)[layer_a]
    xb = extract(model_b, ds, [layer_b], device=device)[layer_b]
    pa = proj.project(xa, p["method"], p["dims"], p["seed"], progress=progress, **params)
    pb = proj.project(xb, p["method"], p["dims"], p["seed"], **params)
    al = proj.align(pa, pb)
    agreement = proj.knn_agreement(xa, xb, k=min(10, len(ds) - 1))
    hover = [ds.hover_text(i) for i in range(len(ds))]
    out = PageResult(spec, provenance=prov)
    out.figures["view_a"] = figures.projection_scatter(pa.coords, ds.labels, "category", hover,
                                                       f"A · {p['a']} · {layer_a}", pa.axis_titles(), ds.label_names)
    out.figures["view_b"] = figures.projection_scatter(al.aligned, ds.labels, "category", hover,
                                                       f"B · {p['b']} · {layer_b} (aligned to A)",
                                                       [f"A's axis {i + 1}" for i in range(pa.coords.shape[1])],
                                                       ds.label_names)
    cols = {f"a{i + 1}": pa.coords[:, i] for i in range(pa.coords.shape[1])}
    cols.update({f"b{i + 1}": al.aligned[:, i] for i in range(al.aligned.shape[1])})
    out.tables["coordinates"] = pd.DataFrame({"row": ds.indices, **cols, "knn_agreement": agreement})
    out.numbers["mean k-NN agreement"] = float(agreement.mean())
    # "Through the layers" (model A, as the page opens): every layer, each aligned to the previous
    path = proj.layer_path(extract(model_a, ds, list(model_a.layers), device=device), p["method"], p["dims"],
                           p["seed"], **params)
    last = model_a.layers[-1]
    m = p["method"].upper()
    out.figures["path_view"] = figures.projection_scatter(path[last], ds.labels, "category", hover,
                                                          f"A · {p['a']} · {last} (aligned to the previous layer)",
                                                          [f"{m} 1", f"{m} 2", f"{m} 3"], ds.label_names, [])
    return out


def _layer(model, wanted, default: str, what: str) -> str:
    return _layers(model, [wanted or default], what)[0]


def run_functional_maps(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    """The Functional maps page's map (similarity, diagnostics, C, spectra, embeddings) and its
    stitching curve, under the page's store keys."""
    import pandas as pd

    from . import fmaps, stitching
    from . import fmaps_figures as ff
    from . import translation as tr
    from .activations import extract

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layer_a = _layer(model_a, p.get("fm_layer_a"), fmaps.default_layer(model_a), "fm_layer_a")
    layer_b = _layer(model_b, p.get("fm_layer_b"), fmaps.default_layer(model_b), "fm_layer_b")
    n = len(ds)
    if n < 20:
        raise UserInputError(f"Functional maps need at least 20 samples (got {n}).")
    xa = extract(model_a, ds, [layer_a], device=device)[layer_a]
    xb = extract(model_b, ds, [layer_b], device=device)[layer_b]
    n_anchors = min(int(p["fm_anchors"]), n // 2)
    anchors = tr.select_anchors(xa, n_anchors, p["fm_select"], ds.labels, p["seed"])
    params = {"n_neighbors": p["fm_k"] or None, "n_eigs": p["fm_eigs"], "descriptors": tuple(p["fm_descr"]),
              "metric": p["fm_metric"], "refine": bool(p["fm_refine"]), "seed": p["seed"]}
    keybase = {"a": model_a.sha256, "b": model_b.sha256, "data": ds.sha256, "la": layer_a, "lb": layer_b}
    half = None if progress is None else (lambda f, m: progress(0.5 * f, m))
    fit = fmaps.cached("fmap_view", lambda: fmaps.fit_arrays(xa, xb, anchors, ds.labels, True, progress=half,
                                                              **params),
                       anchors=anchors.tolist(), selection=p["fm_select"], **keybase, **params)
    out = PageResult(spec, provenance=prov)
    quality = fmaps.match_quality(fit["p2p"], ds.labels)
    out.numbers = {"LFM similarity": float(fit["diag_similarity"]), "same sample": quality["same_sample"],
                   **({"same class": quality["same_class"]} if "same_class" in quality else {}),
                   "orthogonality deviation": float(fit["diag_orthogonality_deviation"]),
                   "Laplacian commutativity": float(fit["diag_laplacian_commutativity"]),
                   "graph pieces (A, B)": f"{int(fit['diag_components_x'])}, {int(fit['diag_components_y'])}"}
    hover = [ds.hover_text(i) for i in range(n)]
    out.figures["fm_c"] = ff.c_heatmap(fit["C"], f"Estimated C ({n_anchors} anchors, {p['fm_select']})")
    out.figures["fm_spectra"] = ff.spectra(fit["lam_x"], fit["lam_y"])
    out.figures["fm_embed"] = ff.spectral_embeddings(fit["phi_x"], fit["phi_y"], ds.labels, hover, ds.label_names,
                                                     f"A · {layer_a}", f"B · {layer_b}")
    if ds.labels is not None:  # the page's stitching sweep, same counts, same store key
        counts = [c for c in stitching.STITCH_COUNTS if c <= n // 2]
        methods = list(tr.METHODS)
        key = dict(keybase, counts=counts, selection=p["fm_select"], seed=p["seed"])
        rest = None if progress is None else (lambda f, m: progress(0.5 + 0.5 * f, m))
        curve = fmaps.cached("fmap_stitch", lambda: stitching.stitch_models(
            model_a, model_b, ds, layer_a, layer_b, counts, methods, p["fm_select"], p["seed"], progress=rest), **key)
        out.figures["fm_stitch"] = ff.stitching_figure(curve, methods)
        table = {"anchors": np.asarray(curve["anchors"]).astype(int)}
        table.update({m: np.asarray(curve[m]) for m in methods if m in curve})
        out.tables["stitching"] = pd.DataFrame(table)
        for bound in ("upper", "lower"):
            if bound in curve:
                out.numbers[f"stitching {bound} bound"] = float(np.asarray(curve[bound]).ravel()[0])
    # the retrieval sweep and the robustness panel, as the page computes them
    counts = [c for c in tr.RETRIEVAL_COUNTS if c <= n // 2]
    lfm_params = dict(params, descriptors=tuple(d for d in p["fm_descr"] if d != "labels") or ("geodesic",))
    rc = fmaps.cached("fmap_retrieval", lambda: dict(
        tr.retrieval_curve(xa, xb, counts, p["fm_select"], ds.labels, p["seed"], lfm_params),
        chance=np.mean(1.0 / np.arange(1, n + 1))), **dict(keybase, counts=counts, selection=p["fm_select"], **params))
    out.figures["fm_retrieval"] = ff.retrieval_figure(rc)
    out.tables["retrieval"] = pd.DataFrame({"anchors": rc["anchors"].astype(int), "LFM + ortho": rc["lfm+ortho"],
                                            "ortho (anchors only)": rc["ortho"], "relative": rc["relative"]})
    if ds.labels is not None:
        classes = [str(c) for c in (ds.label_names or sorted({int(v) for v in ds.labels}))]
        cls_name = p.get("fm_class") or classes[0]
        if cls_name not in classes:
            raise UserInputError(f"fm_class: no class {cls_name!r}; classes are {', '.join(classes)}.")
        cls = classes.index(cls_name)
        rob_key = dict(keybase, cls=cls, alphas=list(fmaps.ROBUST_ALPHAS), k=params["n_neighbors"], eigs=p["fm_eigs"],
                       metric=p["fm_metric"], seed=p["seed"])
        rob = fmaps.cached("fmap_robust", lambda: fmaps.robustness_curve(
            xa, ds.labels, cls, fmaps.ROBUST_ALPHAS, params["n_neighbors"], p["fm_eigs"], p["seed"], p["fm_metric"]),
            **rob_key)
        out.figures["fm_robust"] = ff.robustness_figure(rob, cls_name)
    return out


def run_vector_field(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    """The Vector field page for one autoencoder: trajectories, attractors, memorization, the field
    on a grid and the OOD scores (the page's field, attractors and ood views), under its store keys."""
    import pandas as pd

    from . import data, models
    from . import vector_field as vf
    from . import vector_field_figures as vff

    p = spec.params
    ref = p.get("vf_model")
    if not ref:
        candidates = [r for r in (p["a"], p["b"]) if not r.startswith("hf:") and models.load(r).is_autoencoder]
        ref = candidates[0] if candidates else vf.FALLBACK_MODEL
    model = models.load(ref)
    if not model.is_autoencoder:
        raise UserInputError(f"{ref} is not an autoencoder (it needs encode and decode); pick one with --vf-model.")
    if model.n_inputs == 64 or ref.startswith("zoo:"):  # the zoo's own training split as the reference set
        train_ds, test_ds = data.load("digits", None, 0, "train"), data.load("digits", None, 0, "test")
        train_x, test_x = (np.asarray(d.inputs, dtype=np.float32) for d in (train_ds, test_ds))
        labels, names = train_ds.labels, train_ds.label_names
    else:  # the chosen dataset: first half as the reference set, the rest held out (as the page)
        ds = data.load(p["data"], n=p["n"], seed=p["seed"], split="test")
        model.check_data(ds)
        x = np.asarray(ds.inputs, dtype=np.float32)
        half = len(x) // 2
        train_x, test_x = x[:half], x[half:]
        labels, names = (None if ds.labels is None else ds.labels[:half]), ds.label_names
    params = dict(n_starts=p["vf_starts"], n_noise=p["vf_noise"], max_steps=p["vf_steps"], tol=float(p["vf_tol"]),
                  merge_cos=float(p["vf_merge"]), seed=p["seed"])
    dyn = vf.analyse(model, train_x, test_x, device=device, progress=progress, **params)
    out = PageResult(spec, provenance={"autoencoder": {"ref": ref, "sha256": model.sha256}})
    out.numbers = {"attractors (training, held-out, noise starts)": ", ".join(str(int(c)) for c in dyn.counts),
                   "converged (training starts)": float(dyn.converged_fraction[0]),
                   "largest spectral radius": float(dyn.spectral_radius.max()) if len(dyn.spectral_radius) else None,
                   "memorization coefficient": float(dyn.memorization.coefficient),
                   "memorization null": float(dyn.memorization.null_mean),
                   "unstable fixed points": int(len(dyn.unstable))}
    plane, grid = vf.field_view(model, dyn, m=int(p["vf_grid"]), device=device)
    out.figures["vf_field_fig"] = vff.field_figure(plane, grid, plane.to_plane(dyn.train_latents), labels, names,
                                                   plane.to_plane(dyn.attractors), dyn.unstable, [], p["vf_bg"],
                                                   f"{ref} · {'PCA plane of the latents' if plane.is_pca else '2-D latent space'}")
    out.figures["vf_convergence_fig"] = vff.convergence_figure(dyn.residuals, float(p["vf_tol"]))
    out.figures["vf_memorization_fig"] = vff.memorization_figure(dyn.similarity, dyn.null_similarity,
                                                                 dyn.memorization.coefficient,
                                                                 dyn.memorization.null_mean)
    x_in = test_x[: min(int(p["vf_ood_n"]), len(test_x))]
    res = vf.ood_scores(model, dyn.attractors, x_in, vf.ood_sets(x_in, seed=p["seed"]), max_steps=p["vf_steps"],
                        tol=float(p["vf_tol"]), device=device)
    out.figures["vf_ood_fig"] = vff.ood_figure(res.scores)
    out.tables["ood"] = res.table
    out.numbers["which OOD score wins"] = vf.ood_verdict(res)
    out.tables["attractors"] = pd.DataFrame({"attractor": np.arange(len(dyn.attractors)),
                                             "starts in basin": dyn.attractor_sizes,
                                             "spectral radius": dyn.spectral_radius})
    return out


def run_sae(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    """The SAE features page: an SAE on A's and on B's chosen layer (same hyper-parameters, trained
    once and kept in the store under the page's keys), their metrics, the downstream check, and the
    matched features of A and B."""
    import pandas as pd

    from . import sae as S
    from . import sae_figures as sf
    from .activations import extract

    ds, model_a, model_b, prov = _inputs(spec)
    p = spec.params
    layer_a = _layer(model_a, p.get("sae_layer_a"), model_a.layers[len(model_a.layers) // 2], "sae_layer_a")
    layer_b = _layer(model_b, p.get("sae_layer_b"), model_b.layers[len(model_b.layers) // 2], "sae_layer_b")
    kind = p["sae_kind"]
    params = {"kind": kind, "expansion": p["sae_exp"], "steps": p["sae_steps"], "lr": p["sae_lr"],
              "batch_size": p["sae_bs"]}
    if kind in S.PENALTY_KINDS:
        params["l1"] = p[f"sae_l1_{kind}"]
    else:
        params["k"] = p["sae_k"]
    out = PageResult(spec, provenance=prov)
    trained = {}
    for i, (tag, model, layer) in enumerate((("A", model_a, layer_a), ("B", model_b, layer_b))):
        sub = None if progress is None else (lambda f, m, i=i: progress((i + f) / 2, f"{tag}: {m}"))
        sae = S.trained_sae(model, ds, layer, device=device, progress=sub, **params)
        acts = extract(model, ds, [layer], device=device)[layer]
        metrics = S.evaluate(sae, acts)
        trained[tag] = (sae, acts)
        out.numbers.update({f"{tag} L0": metrics.l0, f"{tag} variance explained": metrics.fve,
                            f"{tag} MSE": metrics.mse, f"{tag} dead fraction": metrics.dead_fraction})
        try:
            down = S.downstream(sae, model, layer, ds)
            out.numbers[f"{tag} loss recovered"] = down.score
        except UserInputError as exc:
            out.numbers[f"{tag} loss recovered"] = f"skipped: {exc}"
        out.figures[f"sae_curve_{tag}"] = sf.training_curve(sae.history, f"{tag} · {layer} · training curve")
        stats = S.feature_stats(sae, acts, ds.labels, tuple(ds.label_names) if ds.label_names else None)
        out.tables[f"features_{tag}"] = pd.DataFrame({"feature": np.arange(sae.d_sae), "density": stats.density,
                                                      "max activation": stats.max_act})
        if tag == p["sae_model"]:  # the browsed model's decoder map, as the page draws it
            coords = S.decoder_map(sae, p["sae_map"])
            out.figures[f"sae_map_{tag}"] = sf.decoder_map_figure(coords, stats.density, None, None,
                                                                  p["sae_map"].upper())
    match = S.match_features(trained["A"][0], trained["A"][1], trained["B"][0], trained["B"][1])
    out.figures["sae_match_quality"] = sf.match_quality(match.correlation, match.best_a, match.threshold)
    out.tables["matches"] = pd.DataFrame({"feature of A": match.a, "feature of B": match.b,
                                          "correlation": match.correlation})
    out.numbers["shared pairs"] = int((match.correlation >= match.threshold).sum())
    out.numbers["pairs"] = int(len(match.a))
    return out


RUNNERS: dict[str, Callable[..., PageResult]] = {
    "projections": run_projections,
    "functional-maps": run_functional_maps,
    "vector-field": run_vector_field,
    "sae": run_sae,
}


def run(spec: AnalysisSpec, progress: Progress | None = None, device=None) -> PageResult:
    if spec.page not in RUNNERS:
        raise UserInputError(f"No headless run for the {spec.page!r} page; runs exist for {', '.join(RUNNERS)}.")
    return RUNNERS[spec.page](spec, progress=progress, device=device)
