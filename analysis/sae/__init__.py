"""Sparse autoencoders (SAEs) on one layer's activations: training, metrics, feature statistics,
matching features across two models, and SAELens-compatible files.

One idea per module: :mod:`.model` (the SAE and its kinds), :mod:`.training`, :mod:`.sparse_step`
(the TopK / BatchTopK step with gradients on the active latents only), :mod:`.sources` (training
rows from an array, or streamed from the on-disk activation cache), :mod:`.metrics`
(evaluate, downstream), :mod:`.features` (statistics, examples, nearest features, decoder map),
:mod:`.matching` (across models), :mod:`.saelens_io` (SAELens files) and :mod:`.trained` (trained
SAEs kept in the result store). Every public name is importable from ``analysis.sae``.

Notation (``../shared/reference/sae.md``): x in R^d one layer's activation, f in R^m the sparse code
(m = expansion * d), x^ = f W_dec + b_dec. Weights are named and laid out as SAELens names them:
``W_enc`` (d x m), ``W_dec`` (m x d, one feature direction per row), ``b_enc`` (m), ``b_dec`` (d),
plus ``threshold`` (m) for JumpReLU and BatchTopK.

Kinds (``SparseAutoencoder.kind``):

- ``topk`` (Gao et al. 2024): f = ReLU(TopK(z)), z = (x - b_dec) W_enc + b_enc; unit-norm decoder rows;
  AuxK loss (top-k_aux dead latents reconstruct the residual, ``training.AUX_COEF``) revives dead
  latents. TopK and BatchTopK train their unit decoder rows through weight normalisation (u = v /
  ||v||, ||v|| from 0.1, as SAELens does) with the encoder starting at 0.3 x the decoder's transpose
  (``training.DECODER_INIT_NORM``, ``ENCODER_INIT_SCALE``): early steps turn the directions faster.
- ``batchtopk`` (Bussmann et al. 2024): the top n*k pre-activations across a batch of n during
  training; at inference one global threshold, the smallest kept activation when the whole
  training set (up to 8192 rows) is one batch, so the mean L0 there is k. Saved for SAELens as
  JumpReLU with that threshold for every latent, exactly as SAELens saves its own BatchTopK SAEs.
- ``relu`` (Anthropic 2023 with the April 2024 update): ReLU(z); loss ||x - x^||^2 +
  l1 * sum_i f_i ||W_dec,i|| (norm-weighted penalty, no norm constraint), decoder rows initialised
  with norm 0.1, penalty warmed up over the first 5% of steps; dead latents resampled (2023 recipe).
- ``jumprelu`` (Rajamanoharan et al. 2024): f = ReLU(z) H(z - theta) (as SAELens encodes it, so a
  negative threshold never gives a negative code); loss ||x - x^||^2 + l1 * L0 with
  straight-through pseudo-derivatives (rectangle kernel, bandwidth ``JUMPRELU_BANDWIDTH``);
  unit-norm decoder rows; dead latents resampled.

TopK and BatchTopK train through :mod:`.sparse_step`: after the encoder's product every operation
touches only the active latents (sparse decoder, sampled gradient, scatter-added weight gradients),
with gradients equal to autograd's on the dense formulation. ReLU and JumpReLU use autograd.

Every kind: the pre-encoder bias b_dec starts at the geometric median of the data (Weiszfeld), the
encoder starts as the decoder's transpose, Adam with the learning rate decayed linearly to 0 over
the last 20% of steps. Training runs on inputs scaled so that E||x||^2 = d (Anthropic 2024), which
makes ``lr`` and ``l1`` mean the same on every layer; the scale is folded back into b_enc, b_dec and
the threshold afterwards, so the saved SAE reads raw activations (decoder rows keep their norms).

``evaluate`` computes the fraction of variance explained over the whole set, not per batch.
"""
from __future__ import annotations

from ..errors import UserInputError
from .features import (QUANTILES, FeatureStats, _check_feature, active_features, decoder_cosines, decoder_map,
                       feature_column, feature_examples, feature_stats, logit_effect, nearest_features, sparse_codes,
                       token_activations)
from .matching import FeatureMatch, correlation_matrix, match_features
from .metrics import DENSE_FRACTION, Downstream, SAEMetrics, downstream, evaluate
from .model import (DEFAULT_L1, JUMPRELU_BANDWIDTH, JUMPRELU_INIT_THRESHOLD, KIND_NAMES, KINDS, PENALTY_KINDS,
                    SAEState, SparseAutoencoder, _JumpReLU, _Step, from_arrays, jumprelu, permuted)
from .saelens_io import (SAELENS_ARCHITECTURE, SAELENS_CFG, SAELENS_WEIGHTS, from_saelens_bytes, from_saelens_upload,
                         load_saelens, save_saelens, saelens_config, saelens_weights, saelens_zip)
from .trained import is_trained, store_key, streams, trained_list, trained_sae
from .training import (AUX_COEF, DEFAULTS, FLOPS_PER_SECOND, INPUTS_PER_LATENT, SMALL_WORK, STEP_OVERHEAD_S,
                       cpu_threads, estimate_seconds, expansion_for, geometric_median, latents_outnumber_inputs,
                       normalise_params, sweep_params, train_sae)

# crosscoders: one dictionary across two models (analysis.crosscoder)
from ..crosscoder import train_crosscoder  # noqa: E402,F401

__all__ = [
    "store_key",
    "AUX_COEF", "DEFAULTS", "DEFAULT_L1", "DENSE_FRACTION", "Downstream", "FLOPS_PER_SECOND", "FeatureMatch",
    "FeatureStats", "JUMPRELU_BANDWIDTH", "JUMPRELU_INIT_THRESHOLD", "KINDS", "KIND_NAMES", "PENALTY_KINDS",
    "QUANTILES", "SAELENS_ARCHITECTURE", "SAELENS_CFG", "SAELENS_WEIGHTS", "SAEMetrics", "SAEState", "SMALL_WORK",
    "STEP_OVERHEAD_S", "SparseAutoencoder", "UserInputError", "active_features", "correlation_matrix", "cpu_threads",
    "decoder_cosines", "decoder_map", "downstream", "estimate_seconds", "evaluate", "expansion_for", "feature_column",
    "feature_examples", "feature_stats", "from_arrays", "from_saelens_bytes", "from_saelens_upload",
    "geometric_median", "INPUTS_PER_LATENT", "is_trained", "jumprelu", "latents_outnumber_inputs", "load_saelens",
    "logit_effect", "match_features",
    "nearest_features", "normalise_params", "permuted", "saelens_config", "saelens_weights", "saelens_zip",
    "save_saelens", "sparse_codes", "streams", "sweep_params", "token_activations", "train_sae", "trained_list", "trained_sae",
]
