"""Flatten and unflatten parameter pytrees (``dict[str, Tensor]``).

The CPO step works on one flat vector ``[P]`` (gradients, Fisher-vector products,
conjugate gradient), while policies are evaluated with ``torch.func.functional_call``
on a dict of named tensors. These two helpers convert between the two views without
detaching, so gradients flow through both directions (needed for MAML meta-gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["flat_concat", "unflatten_like"]


def flat_concat(params: dict[str, Tensor]) -> Tensor:
    """Concatenate the tensors of a parameter dict into one flat vector.

    :param params: named tensors, concatenated in the dict's insertion order.
    :return: ``[P]`` with ``P = sum(t.numel() for t in params.values())``. Differentiable.
    """
    if not params:
        raise ValueError("flat_concat: empty parameter dict")
    # reshape (not view): non-contiguous tensors (e.g. transposed weights) are allowed.
    return torch.cat([t.reshape(-1) for t in params.values()])


def unflatten_like(flat: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (inverse of :func:`flat_concat`).

    :param flat: ``[P]`` flat vector, ``P`` equal to the total size of ``like``.
    :param like: reference dict; only its keys, order and shapes are used.
    :return: dict with the same keys and shapes as ``like``, holding views of ``flat``
        (differentiable with respect to ``flat``).
    """
    total = sum(t.numel() for t in like.values())
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(
            f"unflatten_like: expected a flat vector of {total} elements, "
            f"got shape {tuple(flat.shape)}"
        )
    out: dict[str, Tensor] = {}
    offset = 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = flat[offset : offset + n].view(ref.shape)
        offset += n
    return out


def flat_gradient(objective: Tensor, params: dict[str, Tensor], retain_graph: bool) -> Tensor:
    """``d objective / d params`` flattened ``[P]``; parameters it does not use get zeros."""
    grads = torch.autograd.grad(
        objective, list(params.values()), retain_graph=retain_graph, allow_unused=True
    )
    filled = [
        torch.zeros_like(v) if g is None else g for v, g in zip(params.values(), grads, strict=True)
    ]
    return flat_concat(dict(zip(params, filled, strict=True)))
