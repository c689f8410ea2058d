"""A learned probabilistic ensemble of the Point dynamics (PETS, Chua et al. 2018; MBPO,
Janner et al. 2019): ``members`` MLPs, each a diagonal Gaussian over the targets of
:mod:`meta_safe.dyna.transitions`, trained by Gaussian negative log-likelihood; the
``elites`` members with the lowest held-out MSE predict. One model serves every task:
the context ``(damping_scale, gear_scale)`` is an input.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from meta_safe.device import seeded_generator
from meta_safe.dyna.ensemble_net import EnsembleNet, Standardizer, mean_pairwise_kl
from meta_safe.dyna.transitions import (
    ACCEL_DIM,
    ACTION_DIM,
    CONTEXT_DIM,
    INPUT_DIM,
    STATE_DIM,
    TARGET_DIM,
    Prediction,
    Transitions,
    _check_inputs,
    apply_targets,
    model_inputs,
    model_targets,
)


@dataclass(frozen=True)
class EnsembleConfig:
    """Hyper-parameters of :class:`EnsembleModel` (see its docstring)."""

    members: int = 7
    elites: int = 5
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 4e-2
    weight_decay: float = 1e-5
    batch_size: int = 256
    max_updates: int = 400
    epochs: int = 100
    holdout_fraction: float = 0.2
    max_holdout: int = 5000
    eval_every: int = 250
    patience: int = 5
    buffer_size: int = 200_000
    sample_noise: bool = False
    logvar_bound_weight: float = 0.01
    final_lr_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, low: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {low}")

        for name in (
            "members",
            "batch_size",
            "epochs",
            "max_holdout",
            "eval_every",
            "patience",
            "buffer_size",
        ):
            positive_int(name)
        positive_int("max_updates", 0)
        if not isinstance(self.elites, int) or not 1 <= self.elites <= self.members:
            raise ValueError(
                f"elites={self.elites!r} is invalid: valid range is [1, members={self.members}]"
            )
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(
                f"hidden={self.hidden!r} is invalid: give one or more layer sizes >= 1"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} is invalid: must be a finite number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay={self.weight_decay!r} is invalid: must be >= 0")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(
                f"holdout_fraction={self.holdout_fraction!r} is invalid: valid range is (0, 1)"
            )
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError(
                f"final_lr_fraction={self.final_lr_fraction!r} is invalid: valid range is (0, 1]"
            )
        if not (math.isfinite(self.logvar_bound_weight) and self.logvar_bound_weight >= 0):
            raise ValueError(
                f"logvar_bound_weight={self.logvar_bound_weight!r} is invalid: must be >= 0"
            )


class EnsembleModel:
    """Probabilistic ensemble of MLPs learning the Point dynamics across tasks.

    Inputs and targets: see the module docstring. Every member is an MLP (SiLU, sizes
    ``[7, *hidden, 16]``) outputting a Gaussian mean and a softly bounded log-variance
    over the 8 standardised targets; all members are evaluated at once with batched
    weights ``[members, in, out]``.

    Training (:meth:`train_model`): standardisers are refit on the training split of the
    buffer; a random ``holdout_fraction`` (at most ``max_holdout``) of the buffer is held
    out; every member draws its own random minibatches (diversity from initialisation
    and data order) and minimises the Gaussian NLL plus ``logvar_bound_weight *
    (sum max_logvar - sum min_logvar)`` with AdamW, warm-started from the previous call,
    for at most ``max_updates`` updates or ``epochs`` passes. The learning rate decays
    linearly from ``lr`` to ``lr * final_lr_fraction`` over ``max_updates`` in every call
    (a high initial rate learns the saturating actuators' kink). Every ``eval_every`` updates
    (and at the end) each member's held-out MSE is measured and its best weights kept;
    training stops early once no member improved by more than 1 % for ``patience``
    evaluations. Each member ends at its best weights, and the ``elites`` members with the
    lowest held-out MSE are selected. Everything random comes from the given generator,
    so training is reproducible.

    Prediction (:meth:`predict`, TS-1): each row uses one uniformly drawn elite, its
    Gaussian mean plus (``sample_noise=True``) a draw of its noise. Disagreement:
    :func:`mean_pairwise_kl` over the elites.

    :param members: ensemble size. :param elites: members used for prediction.
    :param hidden: hidden layer sizes. :param lr: AdamW learning rate.
    :param weight_decay: AdamW decoupled weight decay on the weight matrices.
    :param batch_size: minibatch size per member. :param max_updates: gradient steps per
        :meth:`train_model` call (0: only refit the statistics and reselect elites).
    :param epochs: maximum passes over the training split per call.
    :param holdout_fraction: share of the buffer held out for validation, in (0, 1).
    :param max_holdout: cap on held-out samples. :param eval_every: updates between
        held-out evaluations. :param patience: evaluations without improvement before
        stopping. :param buffer_size: FIFO capacity in transitions.
    :param final_lr_fraction: learning-rate multiplier reached at ``max_updates``, (0, 1].
    :param logvar_bound_weight: weight of the soft log-variance bound penalty.
    :param sample_noise: add the aleatoric Gaussian noise to predictions.
    :param seed: seeds the weight initialisation.
    """

    def __init__(
        self,
        members: int = EnsembleConfig.members,
        elites: int = EnsembleConfig.elites,
        hidden: Sequence[int] = EnsembleConfig.hidden,
        lr: float = EnsembleConfig.lr,
        weight_decay: float = EnsembleConfig.weight_decay,
        batch_size: int = EnsembleConfig.batch_size,
        max_updates: int = EnsembleConfig.max_updates,
        epochs: int = EnsembleConfig.epochs,
        holdout_fraction: float = EnsembleConfig.holdout_fraction,
        max_holdout: int = EnsembleConfig.max_holdout,
        eval_every: int = EnsembleConfig.eval_every,
        patience: int = EnsembleConfig.patience,
        buffer_size: int = EnsembleConfig.buffer_size,
        sample_noise: bool = EnsembleConfig.sample_noise,
        final_lr_fraction: float = EnsembleConfig.final_lr_fraction,
        logvar_bound_weight: float = EnsembleConfig.logvar_bound_weight,
        seed: int = EnsembleConfig.seed,
    ) -> None:
        self.config = cfg = EnsembleConfig(
            members=members,
            elites=elites,
            hidden=tuple(hidden),
            lr=float(lr),
            weight_decay=float(weight_decay),
            batch_size=batch_size,
            max_updates=max_updates,
            epochs=epochs,
            holdout_fraction=float(holdout_fraction),
            max_holdout=max_holdout,
            eval_every=eval_every,
            patience=patience,
            buffer_size=buffer_size,
            sample_noise=bool(sample_noise),
            final_lr_fraction=float(final_lr_fraction),
            logvar_bound_weight=float(logvar_bound_weight),
            seed=seed,
        )
        init = seeded_generator(cfg.seed)
        self.net = EnsembleNet(cfg.members, [INPUT_DIM, *cfg.hidden, 2 * TARGET_DIM], init)
        self.input_scaler = Standardizer(INPUT_DIM)
        self.target_scaler = Standardizer(TARGET_DIM)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.net.weights), "weight_decay": cfg.weight_decay},
                {
                    "params": [*self.net.biases, self.net.max_logvar, self.net.min_logvar],
                    "weight_decay": 0.0,
                },
            ],
            lr=cfg.lr,
        )
        self.buffer = Transitions.empty()
        self.elite_indices = torch.arange(cfg.elites)
        self.holdout_mse = torch.full((cfg.members,), float("nan"))
        self.trained = False

    # ------------------------------------------------------------------ data
    def add(self, transitions: Transitions) -> None:
        """Append real transitions, dropping the oldest beyond ``buffer_size`` (FIFO)."""
        merged = Transitions.cat([self.buffer, transitions.to(torch.float32)])
        self.buffer = merged[-self.config.buffer_size :] if len(merged) else merged

    def _arrays(self, data: Transitions) -> tuple[Tensor, Tensor]:
        x = model_inputs(data.states, data.actions, data.context)
        y = model_targets(data.states, data.next_states, data.next_accels)
        return x, y

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _member_mse(self, x: Tensor, y: Tensor, chunk: int = 8192) -> Tensor:
        """Per-member MSE ``[members]`` of the means on standardised ``x [N, 7]``, ``y [N, 8]``."""
        total = torch.zeros(self.config.members, dtype=torch.float64)
        for start in range(0, x.shape[0], chunk):
            mean, _ = self.net(x[start : start + chunk])
            total += (mean - y[start : start + chunk]).pow(2).mean(-1).sum(-1).double()
        return (total / max(x.shape[0], 1)).float()

    def evaluate(self, data: Transitions) -> Tensor:
        """Per-member MSE ``[members]`` on ``data``, in standardised target units."""
        x, y = self._arrays(data.to(torch.float32))
        return self._member_mse(self.input_scaler(x), self.target_scaler(y))

    def select_elites(self, data: Transitions) -> Tensor:
        """Make the ``elites`` members with the lowest MSE on ``data`` the elites.

        :return: their indices ``[elites]``, best first.
        """
        self.holdout_mse = self.evaluate(data)
        self.elite_indices = torch.argsort(self.holdout_mse, stable=True)[: self.config.elites]
        return self.elite_indices

    # ------------------------------------------------------------------ training
    def train_model(self, generator: torch.Generator) -> dict[str, float]:
        """Fit on the buffer (see the class docstring). :return: metrics for logging."""
        cfg = self.config
        n = len(self.buffer)
        if n < 2:
            raise ValueError(
                f"the model buffer holds {n} transitions: need at least 2 to train "
                "(call add() with real data first)"
            )
        start_time = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        n_hold = max(1, min(int(round(n * cfg.holdout_fraction)), cfg.max_holdout, n - 1))
        x_all, y_all = self._arrays(self.buffer)
        train_x, train_y = x_all[perm[n_hold:]], y_all[perm[n_hold:]]
        self.input_scaler.fit(train_x)
        self.target_scaler.fit(train_y)
        train_x, train_y = self.input_scaler(train_x), self.target_scaler(train_y)
        hold_x = self.input_scaler(x_all[perm[:n_hold]])
        hold_y = self.target_scaler(y_all[perm[:n_hold]])
        n_train = train_x.shape[0]
        members = cfg.members

        best = self._member_mse(hold_x, hold_y)
        initial_mse = best.clone()
        snapshot = [p.detach().clone() for p in self._member_params()]
        stale = 0
        updates = epochs = 0
        batch = min(cfg.batch_size, n_train)
        order = self._orders(members, n_train, generator)
        pos = 0
        nll_sum = mse_sum = 0.0
        while updates < cfg.max_updates and epochs < cfg.epochs and stale < cfg.patience:
            if pos + batch > n_train:
                epochs += 1
                order = self._orders(members, n_train, generator)
                pos = 0
                continue
            idx = order[:, pos : pos + batch]
            pos += batch
            frac = 1.0 - (1.0 - cfg.final_lr_fraction) * updates / max(cfg.max_updates, 1)
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * frac
            mean, logvar = self.net(train_x[idx])
            target = train_y[idx]
            sq = (mean - target).pow(2)
            nll = (sq * (-logvar).exp() + logvar).mean((1, 2)).sum()
            bound = self.net.max_logvar.sum() - self.net.min_logvar.sum()
            loss = nll + cfg.logvar_bound_weight * bound
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            updates += 1
            nll_sum += float(nll.detach()) / members
            mse_sum += float(sq.detach().mean())
            if updates % cfg.eval_every == 0:
                best, improved = self._checkpoint_members(snapshot, best, hold_x, hold_y)
                stale = 0 if improved else stale + 1
        if updates % cfg.eval_every:
            self._checkpoint_members(snapshot, best, hold_x, hold_y)
        # each member ends at its best held-out weights
        self._restore(snapshot)
        self.holdout_mse = self._member_mse(hold_x, hold_y)
        self.elite_indices = torch.argsort(self.holdout_mse, stable=True)[: cfg.elites]
        self.trained = True
        elite_mse = self.holdout_mse[self.elite_indices]
        return {
            "model/updates": float(updates),
            "model/epochs": float(epochs),
            "model/train_nll": nll_sum / max(updates, 1),
            "model/train_mse": mse_sum / max(updates, 1),
            "model/holdout_mse_start": float(initial_mse[self.elite_indices].mean()),
            "model/holdout_mse": float(elite_mse.mean()),
            "model/holdout_mse_best": float(elite_mse.min()),
            "model/holdout_mse_worst_member": float(self.holdout_mse.max()),
            "model/buffer": float(n),
            "model/seconds": time.perf_counter() - start_time,
        }

    def _checkpoint_members(
        self, snapshot: list[Tensor], best: Tensor, hold_x: Tensor, hold_y: Tensor
    ) -> tuple[Tensor, bool]:
        """Keep the weights of members that beat their best held-out MSE.

        :return: ``(new best [members], whether any member improved by more than 1 %)``.
        """
        mse = self._member_mse(hold_x, hold_y)
        improved = (best - mse) / best.clamp_min(1e-12) > 0.01
        self._keep_best(snapshot, mse < best)
        return torch.minimum(best, mse), bool(improved.any())

    @staticmethod
    def _orders(members: int, n: int, generator: torch.Generator) -> Tensor:
        """An independent random permutation of ``range(n)`` per member: ``[members, n]``."""
        return torch.argsort(torch.rand(members, n, generator=generator), dim=1)

    def _member_params(self) -> list[Tensor]:
        return [*self.net.weights, *self.net.biases]

    @torch.no_grad()
    def _keep_best(self, snapshot: list[Tensor], better: Tensor) -> None:
        for saved, param in zip(snapshot, self._member_params(), strict=True):
            saved[better] = param[better]

    @torch.no_grad()
    def _restore(self, snapshot: list[Tensor]) -> None:
        for saved, param in zip(snapshot, self._member_params(), strict=True):
            param.copy_(saved)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(
        self,
        states: Tensor,
        actions: Tensor,
        context: Tensor,
        generator: torch.Generator | None = None,
    ) -> Prediction:
        """One step for ``[..., 6]`` states (see the class docstring for TS-1 and noise).

        :param generator: draws the elite of every row (and the noise); the global RNG
            when ``None``.
        """
        _check_inputs(states, actions, context)
        lead = states.shape[:-1]
        flat_states = states.reshape(-1, STATE_DIM).float()
        x = self.input_scaler(
            model_inputs(
                flat_states,
                actions.reshape(-1, ACTION_DIM).float(),
                context.reshape(-1, CONTEXT_DIM).float(),
            )
        )
        rows = x.shape[0]
        mean, logvar = self.net(x, self.elite_indices)  # [K, B, D]
        choice = torch.randint(mean.shape[0], (rows,), generator=generator)
        arange = torch.arange(rows)
        target = mean[choice, arange]
        if self.config.sample_noise:
            noise = torch.randn(target.shape, generator=generator)
            target = target + (0.5 * logvar[choice, arange]).exp() * noise
        next_states, accels = apply_targets(flat_states, self.target_scaler.inverse(target))
        dtype = states.dtype
        return Prediction(
            next_states.reshape(*lead, STATE_DIM).to(dtype),
            accels.reshape(*lead, ACCEL_DIM).to(dtype),
            mean_pairwise_kl(mean, logvar).reshape(lead).to(dtype),
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights, optimiser, scalers, elites, buffer)."""
        return {
            "config": self.config.__dict__.copy(),
            "net": copy.deepcopy(self.net.state_dict()),
            "input_scaler": copy.deepcopy(self.input_scaler.state_dict()),
            "target_scaler": copy.deepcopy(self.target_scaler.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "buffer": {f.name: getattr(self.buffer, f.name).clone() for f in fields(Transitions)},
            "elite_indices": self.elite_indices.clone(),
            "holdout_mse": self.holdout_mse.clone(),
            "trained": self.trained,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. ``members``, ``elites`` and ``hidden`` must match;
        the other hyper-parameters are this model's (the buffer is cut to ``buffer_size``).
        """
        saved = dict(state["config"])
        saved["hidden"] = tuple(saved["hidden"])
        mine = self.config.__dict__
        diff = [k for k in ("members", "elites", "hidden") if saved[k] != mine[k]]
        if diff:
            raise ValueError(
                f"checkpointed ensemble has {', '.join(f'{k}={saved[k]!r}' for k in diff)} but "
                f"this one has {', '.join(f'{k}={mine[k]!r}' for k in diff)}: build it alike"
            )
        self.net.load_state_dict(state["net"])
        self.input_scaler.load_state_dict(state["input_scaler"])
        self.target_scaler.load_state_dict(state["target_scaler"])
        self.optimizer.load_state_dict(state["optimizer"])
        buffer = Transitions(**{k: v.clone() for k, v in state["buffer"].items()})
        self.buffer = buffer[-self.config.buffer_size :] if len(buffer) else buffer
        self.elite_indices = state["elite_indices"].clone()
        self.holdout_mse = state["holdout_mse"].clone()
        self.trained = bool(state["trained"])
