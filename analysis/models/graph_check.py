"""Which operators an uploaded graph may use: an allowlist of numeric tensor operators.

An uploaded TorchScript file (and later a torch.export archive) is a program. ``aten::from_file``
maps any file the process can read (with ``shared=True`` it creates or overwrites it),
``prim::Print`` writes, ``aten::manual_seed`` changes global state, custom namespaces run native
code nobody reviewed. A denylist misses the next such operator, so only the operators listed here
pass: arithmetic, linear algebra, convolution, pooling, normalisation, activations, shapes and
indexing, reductions, and the control flow and containers that scripted modules are made of.

The module is self-contained (standard library only, torch imported inside the one function that
walks a TorchScript module): the sandboxed worker imports it on its own, without the ``analysis``
package, and runs the check before it runs any method of the model.
"""
from __future__ import annotations

from typing import Iterable

# Control flow, containers, constants and attribute access: what scripted modules are made of.
_PRIM = """
Constant GetAttr SetAttr If Loop CallFunction CallMethod ListConstruct ListUnpack TupleConstruct
TupleUnpack TupleIndex DictConstruct Uninitialized unchecked_cast unchecked_unwrap_optional
RaiseException NumToTensor device dtype layout type requires_grad is_nested is_cuda is_cpu
is_quantized is_sparse isinstance min max abs ConstantChunk StringIndex EnumValue EnumName
CreateObject
"""

_ATEN = """
add sub rsub mul div true_divide floor_divide floordiv remainder fmod pow neg negative abs sign sgn
sqrt rsqrt square exp exp2 expm1 log log2 log10 log1p sin cos tan asin acos atan atan2 sinh cosh
tanh asinh acosh atanh floor ceil round trunc frac reciprocal clamp clamp_min clamp_max clip
minimum maximum fmax fmin where lerp addcmul addcdiv erf erfc erfinv hypot nan_to_num isnan isinf
isfinite logical_and logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not
bitwise_xor eq ne lt le gt ge signbit copysign xlogy logaddexp logaddexp2 masked_fill
__and__ __or__ __xor__ __not__ __is__ __isnot__ __contains__ __getitem__ __range_length
__derive_index Bool Float Int IntImplicit FloatImplicit ScalarImplicit

relu relu6 leaky_relu elu selu celu gelu silu mish hardtanh hardsigmoid hardswish hardshrink
softshrink threshold prelu glu softplus log_sigmoid sigmoid logit softmax log_softmax
_softmax _log_softmax

linear bilinear matmul mm bmm addmm addmv addbmm baddbmm mv dot outer einsum tensordot kron
norm frobenius_norm linalg_norm linalg_vector_norm linalg_matrix_norm renorm cdist cosine_similarity
pairwise_distance dist tril triu diag diagonal trace

_convolution convolution conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d pixel_shuffle
pixel_unshuffle pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d
replication_pad2d replication_pad3d im2col col2im __interpolate __upsample __upsample_bilinear
__upsample_nearest upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d
upsample_bilinear2d upsample_bicubic2d upsample_trilinear3d _upsample_nearest_exact1d
_upsample_nearest_exact2d _upsample_nearest_exact3d _upsample_bilinear2d_aa _upsample_bicubic2d_aa
_upsample_lanczos2d_aa grid_sampler

batch_norm native_batch_norm layer_norm native_layer_norm group_norm native_group_norm
instance_norm rms_norm dropout feature_dropout alpha_dropout feature_alpha_dropout embedding
embedding_bag one_hot lstm gru rnn_tanh rnn_relu lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
_native_multi_head_attention _transformer_encoder_layer_fwd scaled_dot_product_attention

view view_as reshape reshape_as flatten unflatten squeeze unsqueeze permute transpose t
contiguous expand expand_as repeat repeat_interleave tile cat concat concatenate stack hstack
vstack split split_with_sizes tensor_split chunk unbind narrow select slice index index_select
gather scatter scatter_add index_add index_put take take_along_dim masked_select flip roll movedim moveaxis
swapaxes unfold clone detach to type_as cpu size dim numel len item tensor scalar_tensor list
append extend insert pop dict keys values items get _set_item copy_ zero_ fill_ is_floating_point
is_grad_enabled is_autocast_enabled format str

sum mean prod amax amin argmax argmin std var std_mean var_mean logsumexp cumsum cumprod all any
median sort argsort topk count_nonzero nansum nanmean

zeros ones full zeros_like ones_like full_like new_zeros new_ones new_full arange linspace eye
rand randn randint rand_like randn_like bernoulli normal
"""

# Written by standard modules in rarely taken branches (deprecated arguments): the text goes to the
# worker's own stderr, which nobody reads, never to a page.
_ATEN_EXTRA = ("warn",)

ALLOWED = frozenset({f"prim::{n}" for n in _PRIM.split()} | {f"aten::{n}" for n in _ATEN.split()}
                    | {f"aten::{n}" for n in _ATEN_EXTRA})
# In-place forms (relu_, add_, masked_fill_, ...) of the numeric operators above; ``set_`` and
# ``resize_`` have no allowed base name and stay refused.
_NO_INPLACE = frozenset({"aten::to", "aten::cpu", "aten::item", "aten::size", "aten::len", "aten::list"})


def normalize(op: str) -> str:
    """``aten::add`` as it is; a schema ``aten::add.Tensor`` or a torch.export target
    ``aten.add.Tensor`` becomes ``aten::add``."""
    op = str(op).strip()
    if "::" not in op:
        op = "::".join(op.split(".")[:2])
    return op.split(".")[0]


def is_allowed(op: str) -> bool:
    name = normalize(op)
    if name in ALLOWED:
        return True
    base = name[:-1]
    return name.endswith("_") and not name.endswith("__") and base in ALLOWED and base not in _NO_INPLACE


def refused(ops: Iterable[str]) -> list[str]:
    """The operators of ``ops`` that are not allowed (normalized, sorted, each once)."""
    return sorted({normalize(o) for o in ops if not is_allowed(o)})


def _graph_kinds(block, where: str, found: dict) -> None:
    for node in block.nodes():
        found.setdefault(node.kind(), where)
        for inner in node.blocks():  # bodies of prim::If / prim::Loop
            _graph_kinds(inner, where, found)


def script_operators(module, functions=()) -> dict[str, str]:
    """Every operator of a loaded TorchScript module: {operator: where it was first seen}.

    Walks the inlined graph of every method of every submodule (forward, exported encode/decode,
    ...), including the nested blocks of prim::If and prim::Loop, and the graph of every function in
    ``functions`` (the module's compilation unit: methods of scripted classes, ``__setstate__``).
    """
    found: dict[str, str] = {}
    for name, sub in module.named_modules():
        for method in sub._c._method_names():
            _graph_kinds(sub._c._get_method(method).inlined_graph, f"{name or 'model'}.{method}", found)
    for fn in functions:
        _graph_kinds(fn.graph, fn.qualified_name, found)
    return found
