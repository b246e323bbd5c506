"""Merging and stitching models beyond anchors: permutation alignment, interpolation barriers,
merged models as references, block swaps.

- :func:`align` (B's units permuted to match A's; its outputs are B's) and :func:`permutations`,
  by activations (Hungarian assignment on unit correlations) or by weights (weight matching);
  :func:`align_many`, cycle-consistent across three or more models;
- :func:`interpolate`: loss and accuracy along (1 - alpha) theta_A + alpha theta_B and the barrier;
- :func:`merge`: the merged model at one alpha, kept in the store as ``merge:<id>``, a model
  reference every page opens (:func:`load_merge`);
- :func:`swap_map`: B with its blocks i..j replaced by A's, bridged by translators.

Modules: ``chain`` (leaf modules as a chain), ``units`` (permutable unit groups), ``matching``
(unit correlations, Hungarian, weight matching), ``align``, ``cycle``, ``weights`` (state dicts,
model copies), ``task`` (task loss), ``interpolate``, ``merge``, ``reference`` (``merge:`` refs),
``blocks`` (block swaps).
"""
from __future__ import annotations

from .align import METHODS, Alignment, align, apply, permutations
from .blocks import BRIDGES, SwapMap, block_boundaries, swap_map
from .cycle import align_many, consistent_permutations, relative_permutation
from .interpolate import Interpolation, barrier, interpolate
from .merge import merge, merged_model
from .reference import load_merge, merged_refs
from .units import unit_groups

__all__ = ["METHODS", "BRIDGES", "Alignment", "Interpolation", "SwapMap", "align", "align_many", "apply", "barrier",
           "block_boundaries", "consistent_permutations", "interpolate", "load_merge", "merge", "merged_model", "merged_refs",
           "permutations", "relative_permutation", "swap_map", "unit_groups"]
