"""JumpReLU SAE training (Rajamanoharan et al. 2024, "Jumping Ahead"), small and deterministic.

Architecture as in Gemma Scope: ``pre = x W_enc + b_enc``, ``f = pre * H(pre - theta)``,
``x_hat = f W_dec + b_dec``. Loss: ``||x - x_hat||^2 + lambda * L0`` with ``L0 = sum_i H(pre_i -
theta_i)``. The step function has no useful gradient, so both it and the JumpReLU get the
paper's straight-through pseudo-derivative with respect to ``theta`` only: a rectangle kernel of
width ``bandwidth`` around the threshold. ``theta = exp(log_theta)`` stays positive, as folding
requires. Decoder rows are renormalised to unit length after every step (Gemma Scope's
convention, which makes ``theta`` carry each feature's scale).

Gemma Scope trains for billions of tokens from a random start; the default run here affords
about 10^5 tokens seen per SAE (a few hundred Adam steps), so the recipe spends none of them
on reaching a sane state and holds the two quantities the default run promises (mean L0 in a
range, no dead features) by control rather than by tuning per layer:

- Input: centred on the training mean and multiplied by one scalar ``c`` so that ``E||c (x -
  mean)||^2 = d_model``, which makes the hyperparameters layer-independent although the
  residual norm grows with depth. Centred, because Gemma residuals are dominated by a
  near-constant component (on Gemma 3 270M only 7-16% of ``E||x||^2`` at layers 1-17 is
  variance around the mean), which would otherwise dominate every Adam step of the encoder.
  Mean and scale are folded back on return (``W_enc, W_dec`` unchanged, ``b_enc`` and ``b_dec``
  shifted, ``b_enc, theta, b_dec`` divided by ``c``), so the returned SAE acts on raw
  activations exactly like the trained one on transformed ones.
- Data-dependent initialisation: each decoder row is a random training token (unit norm), the
  encoder its transpose, each threshold the quantile of that feature's pre-activation at which
  it fires on ``target_l0 / n_features`` of a probe sample, and one scalar on the encoder makes
  the first reconstruction the least-squares fit. Training starts at the target sparsity with
  every feature alive (random directions instead: held-out FVU 0.157 vs 0.131 at layer 9,
  width 512).
- L0 control: after every step all log-thresholds move by ``l0_control * log(L0_batch /
  target_l0)``. Adam normalises the threshold gradient, so ``lambda`` alone sets how fast
  thresholds drift, not where L0 ends (a fixed ``lambda`` gave L0 6-115 across layers; a
  feedback on ``lambda`` oscillated and killed features). ``lambda`` still sets which features
  pay for their firing.
- Firing-rate floor (instead of resampling dead features): each feature's firing rate is
  averaged over about 25 steps, and while it is below ``min_firing_rate`` the feature's
  log-threshold drops by ``threshold_lr`` per step (one Adam step's worth, so a reviving
  feature cannot out-compete trained ones), until it fires on its best-matching tokens again
  and the reconstruction gradient can reshape it. Layer 0, width 1024, 4 epochs: 34% of
  features dead on held-out text without it, 0.6% with it, same FVU. (Resampling dead
  features along the reconstruction error, Bricken et al. 2023, raised it from 19% to 52% in
  an earlier version of this recipe: re-seeded features upset the L0 control and died again.)
- Schedule: Adam (fused), linear warm-up of the learning rate over ``lr_warmup`` and linear
  decay over ``lr_decay`` of the steps; the threshold learning rate decays alike.
- Gradients are written out (the same pseudo-derivatives), 1.3x cheaper than autograd on CPU,
  where the four matmuls of these small SAEs are the whole cost.
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

PROBE_TOKENS = 4096  # training tokens that set the initial thresholds and encoder scale
RATE_WINDOW = 25  # steps over which each feature's firing rate is averaged (firing-rate floor)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters. The defaults are what the default run uses (README, "The default run")."""

    n_features: int
    target_l0: float = 64.0  # mean active features per token on the training batches
    l0_coeff: float = 3.0  # lambda, in units of the transformed squared error
    lr: float = 4e-3  # Adam, for W_enc, b_enc, W_dec, b_dec
    threshold_lr: float = 0.02  # Adam, for log_threshold (moves it by about this per step)
    batch_size: int = 256
    epochs: float = 3.0  # passes over the training activations
    bandwidth: float = 0.1  # epsilon of the rectangle kernel, in transformed units
    l0_control: float = 0.2  # log-thresholds move by this times log(L0 / target_l0) per step
    min_firing_rate: float = 2e-3  # floor on each feature's firing rate; 0 disables it
    lr_warmup: float = 0.1  # first fraction of steps over which lr rises linearly from 0
    lr_decay: float = 0.2  # final fraction of steps over which lr decays linearly to 0
    seed: int = 0
    # bfloat16 for the four matmuls; params, loss and thresholds stay float32. Pays off on
    # GPUs and on CPUs with AMX; slower on CPUs without it.
    bf16: bool = False


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


class _JumpReLUSAE:
    """Parameters in the transformed input space, their gradients, and the initialisation."""

    def __init__(self, d: int, n: int, device: torch.device, bf16: bool) -> None:
        self.W_enc = torch.zeros(d, n, device=device)
        self.b_enc = torch.zeros(n, device=device)
        self.W_dec = torch.zeros(n, d, device=device)
        self.b_dec = torch.zeros(d, device=device)
        self.log_threshold = torch.zeros(n, device=device)
        self.bf16 = bf16

    def params(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec,
                "b_dec": self.b_dec, "log_threshold": self.log_threshold}

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.bfloat16() @ b.bfloat16()).float() if self.bf16 else a @ b

    def init_from(self, seeds: torch.Tensor, probe: torch.Tensor, rate: float) -> None:
        """Decoder rows along ``seeds`` (unit norm), encoder their transpose, thresholds so each
        feature fires on ``rate`` of ``probe``; then one scalar on encoder, ``b_enc`` and
        thresholds (codes and firing pattern unchanged) makes the reconstruction of ``probe``
        the least-squares fit."""
        w = seeds / seeds.norm(dim=1, keepdim=True).clamp_min(1e-12)
        pre = probe @ w.T
        k = max(1, len(probe) - max(1, round(rate * len(probe))))
        theta = pre.kthvalue(k, dim=0).values.clamp_min(1e-6)
        dx = (pre * (pre > theta)) @ w
        alpha = max(float((dx * probe).sum() / (dx * dx).sum().clamp_min(1e-12)), 1e-3)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T * alpha)
        self.log_threshold.copy_((theta * alpha).log())

    def grads(self, x: torch.Tensor, l0_coeff: float, eps: float
              ) -> tuple[dict[str, torch.Tensor], float, torch.Tensor]:
        """Gradients of ``mean_b(||x - x_hat||^2 + l0_coeff * L0)``, the batch's mean L0 and
        each feature's number of active tokens.

        d/dpre is exact where a feature is active (0 elsewhere); d/dtheta is the rectangle-kernel
        pseudo-derivative: ``-(theta/eps) K((pre-theta)/eps) * dloss/df`` from the JumpReLU and
        ``-(l0_coeff/eps) K((pre-theta)/eps)`` from the L0 term (K(u) = 1{|u| < 1/2}).
        """
        m = len(x)
        theta = self.log_threshold.exp()
        pre = self._mm(x, self.W_enc).add_(self.b_enc)
        active = pre > theta
        f = pre * active
        g = self._mm(f, self.W_dec).add_(self.b_dec).sub_(x).mul_(2.0 / m)  # dloss/dx_hat
        g_f = self._mm(g, self.W_dec.T)
        near = (pre - theta).abs_() < eps / 2
        g_theta = -(theta / eps) * (g_f * near).sum(0) - (l0_coeff / (eps * m)) * near.sum(0)
        g_pre = g_f.mul_(active)
        grads = {"W_enc": self._mm(x.T, g_pre), "b_enc": g_pre.sum(0),
                 "W_dec": self._mm(f.T, g), "b_dec": g.sum(0),
                 "log_threshold": g_theta * theta}
        counts = active.sum(0)
        return grads, float(counts.sum()) / m, counts


def train_sae(x_train: np.ndarray, x_eval: np.ndarray, cfg: TrainConfig, *,
              device: str | torch.device = "cpu", progress: bool = True,
              source: str = "<trained>") -> tuple[SAE, dict[str, Any]]:
    """Train one JumpReLU SAE on ``x_train`` [N, d]; return it (raw-activation scale) and a card.

    Deterministic for a given seed, data and device: one seeded generator draws the initial
    dictionary, the probe and the batch order.
    """
    if x_train.ndim != 2 or x_eval.ndim != 2 or x_train.shape[1] != x_eval.shape[1]:
        raise SAEMatchError(f"train/eval activations must be [N, d] with equal d; got "
                            f"{x_train.shape} and {x_eval.shape}")
    if not 0 < cfg.target_l0 < cfg.n_features:
        raise SAEMatchError(f"target_l0 must be in (0, n_features={cfg.n_features}), got "
                            f"{cfg.target_l0}")
    t0, cpu0 = time.perf_counter(), time.process_time()
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device)
    d, n = x_train.shape[1], cfg.n_features
    x64 = torch.from_numpy(np.asarray(x_train)).double()
    mean = x64.mean(0)
    x64 -= mean
    scale = math.sqrt(d / float(x64.pow(2).sum(1).mean()))
    x_all = (x64 * scale).float().to(dev)
    del x64
    rate = cfg.target_l0 / n

    sae = _JumpReLUSAE(d, n, dev, cfg.bf16)
    probe = x_all[torch.randperm(len(x_all), generator=gen)[:PROBE_TOKENS].to(dev)]
    sae.init_from(x_all[torch.randint(len(x_all), (n,), generator=gen).to(dev)], probe, rate)
    params = sae.params()
    groups = [{"params": [v for k, v in params.items() if k != "log_threshold"], "lr": cfg.lr},
              {"params": [params["log_threshold"]], "lr": cfg.threshold_lr}]
    opt = torch.optim.Adam(groups, fused=True)
    steps = max(1, int(cfg.epochs * len(x_all) / cfg.batch_size))
    decay_start = (1.0 - cfg.lr_decay) * steps
    firing_rate = torch.full((n,), rate, device=dev)
    order = torch.empty(0, dtype=torch.long)
    for i in tqdm(range(steps), desc=f"train sae n={n}", disable=not progress, mininterval=2):
        if len(order) < cfg.batch_size:  # next epoch: fresh seeded permutation
            order = torch.cat([order, torch.randperm(len(x_all), generator=gen)])
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        decay = min(1.0, (steps - i) / max(1.0, steps - decay_start))
        warm = min(1.0, (i + 1) / max(1.0, cfg.lr_warmup * steps))
        opt.param_groups[0]["lr"] = cfg.lr * decay * warm
        opt.param_groups[1]["lr"] = cfg.threshold_lr * decay
        grads, l0, counts = sae.grads(x_all[idx.to(dev)], cfg.l0_coeff, cfg.bandwidth)
        for k, v in params.items():
            v.grad = grads[k]
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            sae.log_threshold += cfg.l0_control * math.log(max(l0, 1e-3) / cfg.target_l0)
            firing_rate.lerp_(counts / len(idx), 1.0 / RATE_WINDOW)
            sae.log_threshold[firing_rate < cfg.min_firing_rate] -= cfg.threshold_lr
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0

    p = {k: v.detach().cpu().double().numpy() for k, v in params.items()}
    mu = mean.numpy()
    out = validate(SAE(W_enc=p["W_enc"].astype(np.float32),
                       b_enc=(p["b_enc"] / scale - mu @ p["W_enc"]).astype(np.float32),
                       W_dec=p["W_dec"].astype(np.float32),
                       b_dec=(p["b_dec"] / scale + mu).astype(np.float32),
                       threshold=(np.exp(p["log_threshold"]) / scale).astype(np.float32),
                       source=source))
    card = {"hyperparameters": asdict(cfg), "seed": cfg.seed, "steps": steps,
            "tokens_seen": steps * cfg.batch_size, "n_train_tokens": int(len(x_train)),
            "input_scale": scale, "d_model": d, "device": str(dev), "train_seconds": train_s,
            # CPU-seconds of this process: the cost, even on a machine shared with other jobs.
            "train_cpu_seconds": train_cpu_s,
            **sae_stats(out, np.asarray(x_eval, dtype=np.float32))}
    return out, card


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
