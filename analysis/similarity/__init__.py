"""Representational similarity: the CKA family and related measures, one pair or layer by layer.

Notation: X (n x p1) and Y (n x p2) hold the same n samples in the same row order.

Estimators that subtract large terms (HSIC, Gram centering) run in float64. The layer-by-layer
matrix computes each layer's statistics once (a centred or U-centred Gram matrix, an orthonormal
basis, a ranked RDM, a neighbour list) and every pair from those, the cross terms of the CKA
family as one matrix product of stacked Gram matrices (as in Google's efficient_CKA).

Every Gram or covariance product is formed from column-centred features divided by a power of two
(:func:`_centred`): a large constant offset or an extreme scale (1e+-100) changes no value.

A value means little without its chance level: :func:`calibrated` (one pair) and
:func:`calibrated_matrix` / :func:`layer_calibration` (the heatmap) put each value beside its
permutation null at the same n and dimensions, with the calibrated score
(value - null mean) / (maximum - null mean) and a p-value. Each layer's statistic is computed once
and only permuted (for CKA the centred Gram matrix), so a null costs one product per permutation.

References: Kornblith et al. 2019 (CKA), Song et al. 2012 (unbiased HSIC), Nguyen, Raghu &
Kornblith 2021 (minibatch CKA), Raghu et al. 2017 (SVCCA), Morcos et al. 2018 (PWCCA),
Ding et al. 2021 (Procrustes), Kriegeskorte et al. 2008 (RSA), Huh et al. 2024 (mutual k-NN).

Modules: ``kernels`` (Gram matrices, HSIC), ``measures`` (one pair; the registry), ``matrix``
(layer by layer), ``minibatch`` (the minibatch estimator, streamed), ``statistics`` (bootstrap,
permutation, calibration, stability), ``layers`` (models to a cached matrix), ``cost`` (estimates).
"""
from __future__ import annotations

from .kernels import (  # noqa: F401
    center_gram,
    hsic_biased,
    hsic_unbiased,
    linear_gram,
    rbf_gram,
    squared_distances,
    u_center_gram,
)
from .measures import (  # noqa: F401
    CACHE_VERSION,
    INVARIANCES,
    MEASURES,
    Measure,
    SimilarityWarning,
    cca,
    cka,
    compute,
    debiased_linear_cka,
    linear_cka,
    measure_info,
    mutual_knn,
    procrustes,
    pwcca,
    rbf_cka,
    rsa,
    svcca,
)
from .cost import (  # noqa: F401
    FLOPS_PER_SECOND,
    GRAM_MEMORY_BYTES,
    calibration_seconds,
    check_memory,
    estimate_bytes,
    estimate_seconds,
)
from .minibatch import (  # noqa: F401
    MinibatchCKA,
    batch_slices,
    streaming_cka,
)
from .matrix import (  # noqa: F401
    best_matches,
    similarity_matrix,
)
from .statistics import (  # noqa: F401
    CalibratedMatrix,
    Calibration,
    CellStatistics,
    bootstrap_ci,
    calibrated,
    calibrated_matrix,
    calibrated_score,
    calibration_from_null,
    cell_statistics,
    p_values,
    per_class_similarity,
    permutation_test,
    stability_curve,
    statistics_seconds,
)
from .layers import (  # noqa: F401
    layer_calibration,
    layer_similarity,
)
from .measures import _knn  # noqa: F401  (analysis.projection's neighbour lists)
