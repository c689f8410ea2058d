"""Analytic Fisher-vector products of the Gaussian MLP policy (no double backward).

For a diagonal Gaussian policy ``pi(a|s) = N(mu_theta(s), diag(sigma^2))`` with a
state-independent ``log sigma``, the Hessian of ``KL(pi_old || pi_p)`` at ``p = theta``
is exactly the Fisher matrix (Schulman et al. 2015, appendix C.1; Martens 2014,
"New insights and perspectives on the natural gradient", section 9.2)::

    F(theta) = mean_i J_i^T diag(sigma^-2) J_i   (+)   2 I  on the log-std block,

with ``J_i = d mu(s_i) / d theta_mean`` (mean and log-std blocks do not couple at
``p = theta``). ``F v`` is then one forward-mode pass (``J v``) and one reverse-mode pass
(``J^T u``) through the MLP. Both are written out here as plain matrix products over
activations computed once per operator, so:

* a product costs a few ``[N, width]`` matrix products instead of the two nested
  backward passes of Pearlmutter's trick (:func:`meta_safe.optim.fisher.fisher_matvec`);
* the result is an ordinary differentiable function of ``theta`` and ``v``: autograd
  differentiates it to any order, and the meta-gradient sees the whole dependence of
  ``F(theta)`` on ``theta`` (activations, weights, ``sigma``), exactly as it sees the
  KL Hessian's. ``tests/test_fisher_cg.py`` checks both the products and their
  derivatives against the reverse-over-reverse reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meta_safe.rl.policy import GaussianPolicy, Params

__all__ = ["MLPLayout", "activate", "gaussian_fisher_matvec", "mlp_layout"]


@dataclass(frozen=True)
class MLPLayout:
    """Where the linear layers of ``policy.mean_net`` live in the parameter dict.

    :ivar layers: ``(weight name, bias name)`` of each linear layer, input to output.
    :ivar activation: ``"tanh"``, ``"relu"`` or ``"elu"`` (between hidden layers).
    :ivar order: every parameter name in the flat-vector order of the dict.
    """

    layers: tuple[tuple[str, str], ...]
    activation: str
    order: tuple[str, ...]


_ACTIVATION_NAMES = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.ELU: "elu"}


def mlp_layout(policy: GaussianPolicy, params: Params) -> MLPLayout | None:
    """The layout of ``policy``'s mean MLP, or ``None`` if it is not a plain
    ``Linear -> activation -> ... -> Linear`` stack with one activation kind (then callers
    fall back to the generic KL-Hessian product)."""
    layers, activations = [], set()
    for index, module in enumerate(policy.mean_net):
        if isinstance(module, nn.Linear):
            layers.append((f"mean_net.{index}.weight", f"mean_net.{index}.bias"))
        elif type(module) in _ACTIVATION_NAMES and not (
            isinstance(module, nn.ELU) and module.alpha != 1.0
        ):
            activations.add(_ACTIVATION_NAMES[type(module)])
        else:
            return None
    expected = {name for pair in layers for name in pair} | {"log_std"}
    if len(activations) > 1 or set(params) != expected:
        return None
    return MLPLayout(tuple(layers), activations.pop() if activations else "tanh", tuple(params))


def batched_layers(layout: MLPLayout, params: Params) -> tuple[list[Tensor], list[Tensor]]:
    """The per-task layers as ``torch.baddbmm`` operands, input to output: weights
    ``[T, out, in] -> [T, in, out]`` and biases ``[T, out] -> [T, 1, out]`` (views).

    :param params: per-task parameters, each tensor ``[T, ...]``.
    """
    weights = [params[w].transpose(1, 2) for w, _ in layout.layers]
    biases = [params[b].unsqueeze(1) for _, b in layout.layers]
    return weights, biases


def activate(z: Tensor, kind: str) -> Tensor:
    """The activation ``kind`` of :class:`MLPLayout` applied to ``z``."""
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "relu":
        return torch.relu(z)
    return torch.nn.functional.elu(z)


def _activate(z: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """``(h, dh/dz)`` of the activation at pre-activation ``z``; the slope from ``h``."""
    h = activate(z, kind)
    if kind == "tanh":
        return h, 1.0 - h * h
    if kind == "relu":
        return h, (z > 0).to(z.dtype)
    return h, torch.where(z > 0, torch.ones_like(z), h + 1.0)


def gaussian_fisher_matvec(
    layout: MLPLayout, params: Params, obs: Tensor, damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (F(theta) + damping I) v`` for the Gaussian MLP policy at ``params``.

    :param layout: from :func:`mlp_layout`.
    :param params: policy parameters (may carry autograd history: the products are then
        differentiable in them, to any order).
    :param obs: ``[N, obs_dim]`` observations the Fisher is averaged over.
    :param damping: Tikhonov damping added to the Fisher.
    :return: a function of ``v [P]`` or ``V [K, P]`` (``K`` products at once, flat vectors
        in the order of ``params``), returning the same shape.
    """
    names = layout.order
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    total = sum(sizes)
    count = obs.shape[0]
    # Forward once: the inputs and activation slopes of every layer, shared by all products.
    inputs, slopes = [], []
    h = obs
    last = len(layout.layers) - 1
    for index, (weight_name, bias_name) in enumerate(layout.layers):
        inputs.append(h)
        z = h @ params[weight_name].T + params[bias_name]
        if index < last:
            h, slope = _activate(z, layout.activation)
            slopes.append(slope)
    # The 1/N of the mean folded into the output precision.
    precision = torch.exp(-2.0 * params["log_std"]) / count

    def matvec(vector: Tensor) -> Tensor:
        if vector.dim() not in (1, 2) or vector.shape[-1] != total:
            raise ValueError(
                f"gaussian_fisher_matvec: vector must have shape [{total}] or [K, {total}], "
                f"got {tuple(vector.shape)}"
            )
        batched = vector.dim() == 2
        v = vector if batched else vector.unsqueeze(0)
        k = v.shape[0]
        pieces = dict(
            zip(
                names,
                (
                    p.reshape(k, *shape)
                    for p, shape in zip(torch.split(v, sizes, dim=1), shapes, strict=True)
                ),
                strict=True,
            )
        )
        # J v: tangent of the mean, layer by layer ([K, N, width]).
        tangent = None
        for index, (weight_name, bias_name) in enumerate(layout.layers):
            dz = torch.matmul(inputs[index], pieces[weight_name].transpose(1, 2))
            dz = dz + pieces[bias_name].unsqueeze(1)
            if tangent is not None:
                dz = dz + torch.matmul(tangent, params[weight_name].T)
            tangent = slopes[index] * dz if index < last else dz
        # J^T (precision * J v): reverse pass with the same activations.
        cotangent = tangent * precision
        out: dict[str, Tensor] = {}
        for index in range(last, -1, -1):
            weight_name, bias_name = layout.layers[index]
            out[weight_name] = torch.matmul(cotangent.transpose(1, 2), inputs[index])
            out[bias_name] = cotangent.sum(1)
            if index > 0:
                cotangent = torch.matmul(cotangent, params[weight_name]) * slopes[index - 1]
        # d^2 KL / d log_std^2 = 2 per action dimension at p = theta.
        out["log_std"] = 2.0 * pieces["log_std"]
        product = torch.cat([out[n].reshape(k, -1) for n in names], dim=1) + damping * v
        return product if batched else product.squeeze(0)

    return matvec
