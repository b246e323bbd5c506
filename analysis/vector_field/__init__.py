"""Latent vector fields of autoencoders (Fumero et al., "Navigating the Latent Space Dynamics of
Neural Models", 2025).

An autoencoder with encoder E and decoder D defines a map on its latent space, f(z) = E(D(z)), and
a vector field V(z) = f(z) - z. Iterating z_{t+1} = f(z_t) from z_0 = E(x) gives a trajectory;
where it stops is a fixed point z* = f(z*), an attractor when the Jacobian of f at z* has spectral
radius < 1.

- :func:`iterate` runs every start as one batch on one device; a row stops once
  ``||z_t - z_{t-1}||^2 < tol`` (the paper's ``||f(z_t) - f(z_{t-1})||^2`` with z_t = f(z_{t-1})),
  later steps only touch the rows still moving.
- :func:`find_attractors` merges end points whose cosine similarity exceeds ``merge_cos`` (0.99 in
  the paper) or that lie closer than that rule's chord at the latent space's scale (the cosine says
  nothing near the origin); :func:`jacobian_spectral_radius` checks each with ``torch.func``.
- :func:`memorization_coefficient` (decoded attractors against the training set, with the
  held-out-vs-training null), :func:`dictionary_rank`, :func:`chamfer_similarity`.
- :func:`ood_scores`: the trajectory score (mean distance of the trajectory to the training
  attractors) and the reconstruction error, with AUROC and FPR95 for each out-of-distribution set.
- :func:`probe_dictionary`: attractors reached from Gaussian noise as an OMP dictionary for real
  data, against a random orthonormal basis of the same size.
- :func:`analyse` runs the whole pipeline for one model and caches it in the result store.

``encode`` / ``decode`` are callables on torch tensors: a loaded autoencoder's ``model.encode`` and
``model.decode`` (see :meth:`analysis.models.Model.encode`), or plain functions (tests use a
linear map).

Modules: ``dynamics`` (iteration), ``attractors``, ``memorization``, ``ood``, ``probing``,
``field`` (the field on a grid), ``streamlines``, ``access`` (latent access to a model),
``pipeline`` (the cached analysis of one model, regimes), ``cost`` (estimates).
"""
from __future__ import annotations

from .dynamics import (  # noqa: F401
    CACHE_VERSION,
    DEFAULTS,
    Trajectories,
    iterate,
    iterate_loop,
    rms_norm,
)
from .attractors import (  # noqa: F401
    Attractors,
    find_attractors,
    jacobian_spectral_radius,
    jacobians,
    merge_distance,
)
from .memorization import (  # noqa: F401
    Memorization,
    chamfer_similarity,
    dictionary_rank,
    max_cosine,
    memorization_coefficient,
)
from .ood import (  # noqa: F401
    OODResult,
    SCORE_NAMES,
    auroc,
    fpr_at_95_tpr,
    ood_scores,
    ood_sets,
    ood_table,
    ood_verdict,
    reconstruction_error,
    trajectory_score,
)
from .probing import (  # noqa: F401
    Probe,
    omp,
    probe_dictionary,
    random_orthonormal,
)
from .access import (  # noqa: F401
    array_sha,
    latent_access,
    map_rows,
    noise_inputs,
)
from .field import (  # noqa: F401
    FieldGrid,
    Plane,
    field_on_plane,
    field_view,
    latent_plane,
)
from .pipeline import (  # noqa: F401
    LatentDynamics,
    analyse,
    is_cached,
    regime,
    trajectories_of,
)
