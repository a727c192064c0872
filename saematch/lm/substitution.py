"""Hidden-state substitution (PAPER.md eq. 5): replace layer t+1's output and measure the damage.

For an adjacent pair (t, t+1) a *substitute maker* turns the true residuals after layers t and
t+1 (raw, [m, d_model], non-BOS positions only) into a stand-in for the layer t+1 state, e.g.
``SAE_{t+1}.decode(permute_codes(SAE_t.encode(x_t), P))``. Every maker runs through the same code
path, which reports

- explained variance ``EV = 1 - sum||x_hat - x||^2 / sum||x - mean(x)||^2`` against the true
  layer t+1 state, sums over all evaluated tokens and all dims, ``mean(x)`` the per-dim mean over
  those tokens (so the denominator is the total variance, trace of the covariance, times m);
- ``delta_loss = CE(substituted) - CE(clean)``, mean next-token cross-entropy in nats per
  token over positions that are not BOS and have a next token (the prediction made at a BOS
  position cannot change, since BOS is not substituted and attention is causal), with its
  standard error over sequences (the same tokens are used for every maker, so differences
  between makers are paired).

BOS positions keep their true state (SAEs are neither trained nor evaluated on BOS).

Cost: one clean pass per batch records every layer's output and the keyword arguments each
decoder layer was called with (masks, rotary embeddings). A substitute is then pushed through
layers t+2..end only, replaying those recorded arguments, plus the final norm and LM head, which
is computed in row chunks so the [tokens, vocab] logits never exist for a whole batch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..assign import permute_codes
from ..errors import SAEMatchError
from ..sae import SAE, fold
from .activations import block_output
from .model import decoder_layers, logits_from_last_hidden

# (x_t, x_t1) -> substitute for x_t1; raw float32 arrays [m, d_model].
SubstituteMaker = Callable[[np.ndarray, np.ndarray], np.ndarray]


def transfer(sae_t: SAE, sae_t1: SAE, perm: np.ndarray, *, folded: bool = True) -> SubstituteMaker:
    """Eq. 5: encode with SAE_t, carry codes to layer t+1's order, decode with SAE_{t+1}.

    ``folded`` uses the folded SAEs (every feature fires at 1, decoder rows carry the scale), so
    a code keeps its value relative to its threshold and is rescaled to the matched layer-(t+1)
    feature's threshold; unfolded codes keep their raw magnitude. Both are the same SAEs; only
    the transfer differs.
    """
    a, b = (fold(sae_t), fold(sae_t1)) if folded else (sae_t, sae_t1)
    return lambda x_t, _x_t1: b.decode(permute_codes(a.encode(x_t), perm))


def reconstruction_next(sae_t1: SAE) -> SubstituteMaker:
    """Baseline: SAE_{t+1}'s own reconstruction of the true layer t+1 state."""
    return lambda _x_t, x_t1: sae_t1.reconstruct(x_t1)


def reconstruction_prev(sae_t: SAE) -> SubstituteMaker:
    """Baseline: SAE_t's reconstruction of layer t's state, used as is."""
    return lambda x_t, _x_t1: sae_t.reconstruct(x_t)


def layer_skip(x_t: np.ndarray, _x_t1: np.ndarray) -> np.ndarray:
    """Baseline: layer t's state itself (layer t+1 skipped)."""
    return x_t


def true_state(_x_t: np.ndarray, x_t1: np.ndarray) -> np.ndarray:
    """Sanity check: the true state; must give EV = 1 and delta_loss = 0."""
    return x_t1


@dataclass
class _Acc:
    """Running sums for one (pair, maker), float64."""

    sse: float = 0.0
    ce_sum: float = 0.0
    seq_delta: list[float] = field(default_factory=list)  # per sequence: sum of CE changes


@dataclass
class _CleanBatch:
    """What the clean pass of one batch leaves for the substitutes."""

    outputs: list[torch.Tensor]  # per layer, [B, L, d]
    calls: list[tuple[tuple, dict]]  # per layer, (args after hidden_states, kwargs)
    ce: torch.Tensor  # [B, L], 0 where not counted


def _token_ce(model: nn.Module, h_last: torch.Tensor, targets: torch.Tensor,
              loss_mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-position next-token CE [B, L] (0 outside ``loss_mask``), head run in row chunks."""
    out = torch.zeros(loss_mask.shape, dtype=torch.float64, device=h_last.device)
    idx = loss_mask.nonzero(as_tuple=True)
    rows, tgt = h_last[idx], targets[idx]
    ce = torch.empty(len(rows), dtype=torch.float64, device=h_last.device)
    for s in range(0, len(rows), chunk):
        logits = logits_from_last_hidden(model, rows[s:s + chunk]).float()
        pick = logits.gather(1, tgt[s:s + chunk, None])[:, 0]
        ce[s:s + chunk] = (torch.logsumexp(logits, 1) - pick).double()
    out[idx] = ce
    return out


def _clean_pass(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor,
                targets: torch.Tensor, loss_mask: torch.Tensor, chunk: int) -> _CleanBatch:
    n = len(layers)
    outputs: list[Any] = [None] * n
    calls: list[Any] = [None] * n

    def pre_hook(k: int):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[k] = (args[1:], dict(kwargs))
        return hook

    def post_hook(k: int):
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            outputs[k] = block_output(out)
        return hook

    handles = [layers[k].register_forward_pre_hook(pre_hook(k), with_kwargs=True)
               for k in range(n)] + [layers[k].register_forward_hook(post_hook(k))
                                     for k in range(n)]
    try:
        base = model.get_decoder()
        base(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    ce = _token_ce(model, outputs[-1], targets, loss_mask, chunk)
    return _CleanBatch(outputs, calls, ce)


def _tail(layers: nn.ModuleList, clean: _CleanBatch, start: int, h: torch.Tensor) -> torch.Tensor:
    """Run layers ``start..end`` on ``h`` with the arguments recorded in the clean pass."""
    for k in range(start, len(layers)):
        args, kwargs = clean.calls[k]
        h = block_output(layers[k](h, *args, **kwargs))
    return h


def evaluate_substitutions(model: nn.Module, tokens: np.ndarray,
                           pairs: Mapping[int, Mapping[str, SubstituteMaker]], *,
                           bos_token_id: int, batch_size: int = 8, head_chunk: int = 256,
                           loss_stride: int = 1,
                           progress: bool = True) -> dict[int, dict[str, dict[str, float]]]:
    """EV and delta_loss of every maker of every pair ``t -> {name: maker}`` (see module doc).

    ``loss_stride`` k > 1 counts the loss only at positions p with ``p % k == 0`` (still every
    token is substituted and every layer runs on all positions). The LM head is the dominant cost
    for a small model with a large vocabulary (Gemma 3 270M: 262k x 640), and neighbouring
    positions' losses are strongly correlated, so k = 2 roughly halves the cost of a substitute
    for little loss of precision. EV always uses every non-BOS position.

    Returns ``{t: {name: {"ev", "delta_loss", "delta_loss_se", "ce", "ce_clean", "n_tokens",
    "n_loss_tokens"}}}``. ``tokens`` [n_seq, seq_len] int; batches of ``batch_size`` sequences
    bound the memory (all layers' states of one batch are held).
    """
    layers = decoder_layers(model)
    bad = [t for t in pairs if not 0 <= t < len(layers) - 1]
    if bad:
        raise SAEMatchError(f"pairs {bad} out of range for {len(layers)} layers (t, t+1 needed)")
    device = next(model.parameters()).device
    keep = tokens != bos_token_id
    loss_np = np.zeros_like(keep)
    loss_np[:, :-1] = keep[:, :-1]
    if loss_stride < 1:
        raise SAEMatchError(f"loss_stride must be >= 1, got {loss_stride}")
    loss_np[:, np.arange(tokens.shape[1]) % loss_stride != 0] = False
    d = model.config.hidden_size
    acc = {t: {name: _Acc() for name in makers} for t, makers in pairs.items()}
    mom = {t: [np.zeros(d), 0.0, 0] for t in pairs}  # per pair: sum x, sum ||x||^2, count
    ce_clean_sum = 0.0
    n_subs = sum(len(makers) for makers in pairs.values())
    bar = tqdm(total=-(-len(tokens) // batch_size) * n_subs, desc="substitution",
               unit="substitute", disable=not progress)
    for s in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[s:s + batch_size]).to(device)
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        kmask = torch.from_numpy(keep[s:s + batch_size]).to(device)
        lmask = torch.from_numpy(loss_np[s:s + batch_size]).to(device)
        with torch.inference_mode():
            clean = _clean_pass(model, layers, ids, targets, lmask, head_chunk)
            ce_clean_sum += float(clean.ce.sum())
            for t, makers in pairs.items():
                x_t = clean.outputs[t][kmask].float().cpu().numpy()
                x_t1_t = clean.outputs[t + 1][kmask]
                x_t1 = x_t1_t.float().cpu().numpy()
                x64 = x_t1.astype(np.float64)
                mom[t][0] += x64.sum(0)
                mom[t][1] += float((x64 ** 2).sum())
                mom[t][2] += len(x64)
                for name, make in makers.items():
                    sub = np.asarray(make(x_t, x_t1), dtype=np.float32)
                    if sub.shape != x_t1.shape:
                        raise SAEMatchError(f"pair {t}, substitute {name}: shape {sub.shape}, "
                                            f"expected {x_t1.shape}")
                    a = acc[t][name]
                    a.sse += float(((sub.astype(np.float64) - x64) ** 2).sum())
                    h = clean.outputs[t + 1].clone()
                    h[kmask] = torch.from_numpy(sub).to(device=device, dtype=h.dtype)
                    h = _tail(layers, clean, t + 2, h)
                    ce = _token_ce(model, h, targets, lmask, head_chunk)
                    a.ce_sum += float(ce.sum())
                    a.seq_delta += (ce - clean.ce).sum(1).tolist()
                    bar.update()
    bar.close()
    n_loss = int(loss_np.sum())
    ce_clean = ce_clean_sum / n_loss
    per_seq_tokens = loss_np.sum(1)
    out: dict[int, dict[str, dict[str, float]]] = {}
    for t, by_name in acc.items():
        sx, sxx, m = mom[t]
        total_var = sxx - float((sx ** 2).sum()) / m
        out[t] = {}
        for name, a in by_name.items():
            # Ratio estimator: per-sequence delta sums over per-sequence token counts.
            delta = np.asarray(a.seq_delta)
            mean = float(delta.sum() / per_seq_tokens.sum())
            resid = delta - mean * per_seq_tokens
            se = float(np.sqrt((resid ** 2).sum() * len(delta) / max(1, len(delta) - 1))
                       / per_seq_tokens.sum())
            out[t][name] = {"ev": 1.0 - a.sse / total_var, "delta_loss": mean,
                            "delta_loss_se": se, "ce": a.ce_sum / n_loss, "ce_clean": ce_clean,
                            "n_tokens": int(m), "n_loss_tokens": n_loss}
    return out


def standard_makers(sae_t: SAE, sae_t1: SAE,
                    perms: Mapping[str, np.ndarray]) -> dict[str, SubstituteMaker]:
    """The paper's substitutes for one pair: one folded transfer per permutation + baselines."""
    makers: dict[str, SubstituteMaker] = {
        f"transfer_{name}": transfer(sae_t, sae_t1, p) for name, p in perms.items()}
    makers.update({"sae_next_reconstruction": reconstruction_next(sae_t1),
                   "sae_prev_reconstruction": reconstruction_prev(sae_t),
                   "layer_skip": layer_skip})
    return makers
