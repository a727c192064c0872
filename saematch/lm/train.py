"""JumpReLU SAE training (Rajamanoharan et al. 2024, "Jumping Ahead"), small and deterministic.

Architecture as in Gemma Scope: ``pre = x W_enc + b_enc``, ``f = pre * H(pre - theta)``,
``x_hat = f W_dec + b_dec``. Loss: ``||x - x_hat||^2 + lambda * L0`` with ``L0 = sum_i H(pre_i -
theta_i)``. The step function has no useful gradient, so both it and the JumpReLU get the
paper's straight-through pseudo-derivative with respect to ``theta`` only: a rectangle kernel of
width ``bandwidth`` around the threshold. ``theta = exp(log_theta)`` stays positive, as folding
requires. Decoder rows are renormalised to unit length after every step (Gemma Scope's
convention, which makes ``theta`` carry each feature's scale).

Input scale: activations are multiplied by one scalar ``c`` so that ``E||c (x - mean)||^2 =
d_model`` on the training set, which makes the hyperparameters roughly layer-independent even
though the residual norm grows with depth. Centred, because Gemma residuals are dominated by a
near-constant component (on Gemma 3 270M only 8-23% of ``E||x||^2`` is variance around the mean),
which ``b_dec`` absorbs and which should not set the scale of the features. The scale is folded
back on return (``W_enc`` unchanged, ``b_enc, theta, b_dec`` divided by ``c``; unit decoder rows
kept), so the returned SAE acts on raw activations exactly like the trained one on scaled ones.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SAEMatchError
from ..sae import SAE, validate


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; defaults tuned on Gemma 3 270M residuals (benchmarks/lm_timing.py)."""

    n_features: int
    l0_coeff: float = 1.0  # lambda, in units of the scaled squared error
    lr: float = 2e-3
    threshold_lr: float = 6e-3  # for log_threshold; see train_sae
    batch_size: int = 256
    epochs: float = 3.0  # passes over the training activations
    bandwidth: float = 0.1  # epsilon of the rectangle kernel, in scaled units
    init_threshold: float = 0.2  # scaled units (centred per-direction std is about 1)
    l0_warmup: float = 0.2  # fraction of steps over which lambda ramps up linearly from 0
    lr_decay: float = 0.2  # final fraction of steps over which lr decays linearly to 0
    seed: int = 0
    # bfloat16 autocast for the two matmuls; params, loss and thresholds stay float32. Pays off
    # on GPUs and on CPUs with AMX; slower on CPUs without it.
    bf16: bool = False


def _rect(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel K(u) = 1{|u| < 1/2}."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - theta)``; d/dpre exact, d/dtheta = -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        k = _rect((pre - theta) / ctx.eps)
        return g * (pre > theta), (-(theta / ctx.eps) * k * g).sum(0), None


class _Step(torch.autograd.Function):
    """``H(pre - theta)``; d/dpre = 0, d/dtheta = -(1/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        k = _rect((pre - theta) / ctx.eps)
        return None, (-(1.0 / ctx.eps) * k * g).sum(0), None


def explained_variance(x_hat: np.ndarray, x: np.ndarray) -> float:
    """``1 - sum||x_hat - x||^2 / sum||x - mean(x)||^2``, sums over tokens and dims.

    ``mean(x)`` is the per-dimension mean over the tokens given, so this is the fraction of the
    total variance (trace of the covariance) that ``x_hat`` accounts for; FVU = 1 - this.
    """
    x64 = x.astype(np.float64)
    err = ((x_hat.astype(np.float64) - x64) ** 2).sum()
    tot = ((x64 - x64.mean(0)) ** 2).sum()
    return float(1.0 - err / tot)


def sae_stats(sae: SAE, x: np.ndarray, batch: int = 8192) -> dict[str, float]:
    """Held-out FVU, mean L0 and dead fraction (features that never fire on ``x``)."""
    fired = np.zeros(sae.n_features, dtype=bool)
    l0 = 0.0
    x_hat = np.empty_like(x)
    for s in range(0, len(x), batch):
        f = sae.encode(x[s:s + batch])
        active = f != 0
        fired |= active.any(0)
        l0 += float(active.sum())
        x_hat[s:s + batch] = sae.decode(f)
    return {"fvu": 1.0 - explained_variance(x_hat, x), "l0": l0 / len(x),
            "dead_fraction": float(1.0 - fired.mean()), "n_eval_tokens": int(len(x))}


def train_sae(x_train: np.ndarray, x_eval: np.ndarray, cfg: TrainConfig, *,
              device: str | torch.device = "cpu", progress: bool = True,
              source: str = "<trained>") -> tuple[SAE, dict[str, Any]]:
    """Train one JumpReLU SAE on ``x_train`` [N, d]; return it (raw-activation scale) and a card.

    Deterministic for a given seed, data and device: ``torch.manual_seed`` fixes the
    initialisation and a seeded generator fixes the batch order.
    """
    if x_train.ndim != 2 or x_eval.ndim != 2 or x_train.shape[1] != x_eval.shape[1]:
        raise SAEMatchError(f"train/eval activations must be [N, d] with equal d; got "
                            f"{x_train.shape} and {x_eval.shape}")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device)
    d, n = x_train.shape[1], cfg.n_features
    x_all = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    centred = x_all.double() - x_all.double().mean(0)
    scale = math.sqrt(d / float((centred ** 2).sum(1).mean()))
    del centred
    x_all = (x_all * scale).to(dev)

    w_dec = torch.randn(n, d, device=dev)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_dec = x_all.mean(0)
    params = {
        "W_dec": w_dec,
        "W_enc": w_dec.T.clone(),
        # Start as if inputs were centred: pre = (x - mean) . w, so no feature fires on the mean.
        "b_enc": -(b_dec @ w_dec.T),
        "b_dec": b_dec.clone(),
        "log_threshold": torch.full((n,), math.log(cfg.init_threshold), device=dev),
    }
    for p in params.values():
        p.requires_grad_(True)
    # Adam moves each parameter by about its lr per step whatever the gradient's size, so in a
    # few thousand steps log_threshold could otherwise move only by a factor of a few and the
    # starting threshold, not l0_coeff, would set the sparsity (seen on Gemma 3 270M: L0 25-115
    # across layers, nearly independent of l0_coeff 1-30). A larger threshold lr lets thresholds
    # reach the balance between l0_coeff and reconstruction within the budget.
    groups = [{"params": [v for k, v in params.items() if k != "log_threshold"], "lr": cfg.lr},
              {"params": [params["log_threshold"]], "lr": cfg.threshold_lr}]
    opt = torch.optim.Adam(groups)
    steps = max(1, int(cfg.epochs * len(x_all) / cfg.batch_size))
    warm, decay_start = cfg.l0_warmup * steps, (1.0 - cfg.lr_decay) * steps

    def lr_factor(i: int) -> float:
        return min(1.0, (steps - i) / max(1.0, steps - decay_start))

    order = torch.empty(0, dtype=torch.long)
    for i in tqdm(range(steps), desc=f"train sae n={n}", disable=not progress, mininterval=2):
        if len(order) < cfg.batch_size:  # next epoch: fresh seeded permutation
            order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        x = x_all[idx.to(dev)]
        for group, base in zip(opt.param_groups, (cfg.lr, cfg.threshold_lr)):
            group["lr"] = base * lr_factor(i)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pre = x @ params["W_enc"] + params["b_enc"]
        pre = pre.float()
        theta = params["log_threshold"].exp()
        f = _JumpReLU.apply(pre, theta, cfg.bandwidth)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            x_hat = f @ params["W_dec"] + params["b_dec"]
        rec = ((x_hat.float() - x) ** 2).sum(1).mean()
        l0 = _Step.apply(pre, theta, cfg.bandwidth).sum(1).mean()
        loss = rec + cfg.l0_coeff * min(1.0, (i + 1) / max(1.0, warm)) * l0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
    train_s = time.perf_counter() - t0

    with torch.no_grad():
        p = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in params.items()}
    sae = validate(SAE(W_enc=p["W_enc"], b_enc=p["b_enc"] / scale, W_dec=p["W_dec"],
                       b_dec=p["b_dec"] / scale, threshold=np.exp(p["log_threshold"]) / scale,
                       source=source))
    card = {"hyperparameters": asdict(cfg), "seed": cfg.seed, "steps": steps,
            "tokens_seen": steps * cfg.batch_size, "n_train_tokens": int(len(x_train)),
            "input_scale": scale, "d_model": d, "train_seconds": train_s,
            **sae_stats(sae, np.asarray(x_eval, dtype=np.float32))}
    return sae, card


# Thresholds of quality_flag. An SAE that explains less than half the variance, keeps almost
# nothing or almost everything active, or has most features dead would make any matching result
# uninterpretable: its codes are not a sparse description of the residual stream.
MAX_FVU = 0.5
MAX_DEAD_FRACTION = 0.5
MIN_L0 = 1.0


def quality_flag(card: dict[str, Any]) -> list[str]:
    """Reasons this SAE is too poor to be worth matching; empty when it is fine.

    Limits: held-out FVU > 0.5; mean L0 < 1 or > n_features / 2 (an SAE that fires half its
    features is not sparse); dead fraction > 0.5 (matching would pair mostly dead features).
    """
    n = card["hyperparameters"]["n_features"]
    reasons = []
    if not card["fvu"] <= MAX_FVU:
        reasons.append(f"held-out FVU {card['fvu']:.3f} > {MAX_FVU}")
    if not MIN_L0 <= card["l0"] <= n / 2:
        reasons.append(f"mean L0 {card['l0']:.1f} outside [{MIN_L0:g}, {n / 2:g}]")
    if not card["dead_fraction"] <= MAX_DEAD_FRACTION:
        reasons.append(f"dead fraction {card['dead_fraction']:.3f} > {MAX_DEAD_FRACTION}")
    return reasons
