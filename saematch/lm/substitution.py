"""Hidden-state substitution (PAPER.md eq. 5): replace layer b's output and measure the damage.

For an adjacent pair (a, b = a + 1) a *substitute maker* turns the true residuals after layers
a and b (raw, [m, d_model], non-BOS positions only) into a stand-in for the layer-b state, e.g.
``SAE_b.decode(permute_codes(SAE_a.encode(x_a), P))``. Every maker runs through the same code,
which reports per held-out sequence

- the squared error against the true layer-b state and the moments of that state, from which
  the explained variance ``EV = 1 - sum||x_hat - x||^2 / sum||x - mean(x)||^2`` (sums over
  tokens and dims, ``mean(x)`` the per-dimension mean) follows; this needs no model, the states
  come from the stored activations;
- for the makers chosen for it, the summed change of next-token cross-entropy (nats) over the
  sequence's loss positions when the substitute replaces layer b's output at every non-BOS
  position: ``delta_loss = CE(substituted) - CE(clean)`` per token is the ratio of these sums
  to the loss-token counts. Loss positions are those that are not BOS and have a next token
  (a prediction made at BOS cannot change: BOS keeps its true state and attention is causal),
  thinned to every ``loss_stride``-th position.

Per-sequence sums are what :mod:`saematch.bootstrap` resamples.

Cost of delta_loss: only blocks b+1..end and the LM head run per substitute. The state after
block b is assembled from the substitute (non-BOS positions) and the BOS state, which is the
same for every sequence (position 0 attends only to itself); the arguments each block is called
with (attention masks, rotary embeddings, positions) are recorded in a pass in which every block
is the identity, which costs the embedding lookup only. The clean loss is computed once per
dataset (:func:`clean_loss`). The LM head runs at loss positions only, in row chunks, so the
[tokens, vocab] logits never exist for a whole batch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
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

# (x_a, x_b) -> substitute for x_b; raw float32 arrays [m, d_model].
SubstituteMaker = Callable[[np.ndarray, np.ndarray], np.ndarray]


def transfer(sae_a: SAE, sae_b: SAE, perm: np.ndarray, *, folded: bool = True) -> SubstituteMaker:
    """Eq. 5: encode with SAE_a, carry codes to layer b's order, decode with SAE_b.

    ``folded`` uses the folded SAEs (every feature fires at 1, decoder rows carry the scale), so
    a code keeps its value relative to its threshold and is rescaled to the matched layer-b
    feature's threshold; unfolded codes keep their raw magnitude. Both are the same SAEs; only
    the transfer differs.
    """
    a, b = (fold(sae_a), fold(sae_b)) if folded else (sae_a, sae_b)
    return lambda x_a, _x_b: b.decode(permute_codes(a.encode(x_a), perm))


def reconstruction_next(sae_b: SAE) -> SubstituteMaker:
    """Baseline: SAE_b's own reconstruction of the true layer-b state."""
    return lambda _x_a, x_b: sae_b.reconstruct(x_b)


def reconstruction_prev(sae_a: SAE) -> SubstituteMaker:
    """Baseline: SAE_a's reconstruction of layer a's state, used as is."""
    return lambda x_a, _x_b: sae_a.reconstruct(x_a)


def layer_skip(x_a: np.ndarray, _x_b: np.ndarray) -> np.ndarray:
    """Baseline: layer a's state itself (layer b skipped)."""
    return x_a


def true_state(_x_a: np.ndarray, x_b: np.ndarray) -> np.ndarray:
    """Sanity check: the true state; must give EV = 1 and delta_loss = 0."""
    return x_b


def standard_makers(sae_a: SAE, sae_b: SAE,
                    perms: Mapping[str, np.ndarray]) -> dict[str, SubstituteMaker]:
    """The paper's substitutes for one pair: one folded transfer per permutation + baselines."""
    makers: dict[str, SubstituteMaker] = {
        f"transfer_{name}": transfer(sae_a, sae_b, p) for name, p in perms.items()}
    makers.update({"sae_next_reconstruction": reconstruction_next(sae_b),
                   "sae_prev_reconstruction": reconstruction_prev(sae_a),
                   "layer_skip": layer_skip})
    return makers


def loss_mask(tokens: np.ndarray, bos_token_id: int, stride: int = 1) -> np.ndarray:
    """Positions whose next-token loss counts: not BOS, with a next token, ``p % stride == 0``.

    The LM head is the dominant cost for a small model with a large vocabulary (Gemma 3 270M:
    262k x 640) and neighbouring positions' losses are strongly correlated, so a stride of a few
    costs little precision (the bootstrap interval says how much).
    """
    if stride < 1:
        raise SAEMatchError(f"loss_stride must be >= 1, got {stride}")
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[:, :-1] = tokens[:, :-1] != bos_token_id
    mask[:, np.arange(tokens.shape[1]) % stride != 0] = False
    return mask


def sequence_moments(x_b: np.ndarray, seq: np.ndarray, n_seq: int) -> dict[str, np.ndarray]:
    """Per-sequence token count, sum and sum of squared norms of the true state (for SST)."""
    x64 = x_b.astype(np.float64)
    x_sum = np.zeros((n_seq, x_b.shape[1]))
    np.add.at(x_sum, seq, x64)
    return {"count": np.bincount(seq, minlength=n_seq).astype(np.float64), "x_sum": x_sum,
            "x_sq": np.bincount(seq, weights=(x64 ** 2).sum(1), minlength=n_seq)}


def squared_errors(sub: np.ndarray, x_b: np.ndarray, seq: np.ndarray, n_seq: int) -> np.ndarray:
    """Per-sequence sum of ``||sub - x_b||^2`` over tokens and dims (float64)."""
    err = ((sub.astype(np.float64) - x_b.astype(np.float64)) ** 2).sum(1)
    return np.bincount(seq, weights=err, minlength=n_seq)


class Tail:
    """The blocks after a given layer, the final norm and the LM head of a causal LM, replayed
    on hidden states that stand in for a block's output (see the module docstring)."""

    def __init__(self, model: nn.Module, bos_token_id: int, head_chunk: int = 256):
        self.model = model
        self.layers = decoder_layers(model)
        self.device = next(model.parameters()).device
        self.head_chunk = head_chunk
        self.bos_token_id = bos_token_id
        self.bos_states, self._returns_tuple = self._probe()

    def _probe(self) -> tuple[list[torch.Tensor], bool]:
        """Every block's output at a lone BOS (the BOS state of every sequence) and whether
        blocks return a tuple or a bare tensor (it differs between transformers versions)."""
        outs: list[Any] = [None] * len(self.layers)

        def hook(k: int):
            def fn(_m: nn.Module, _a: Any, out: Any) -> None:
                outs[k] = out
            return fn

        handles = [layer.register_forward_hook(hook(k)) for k, layer in enumerate(self.layers)]
        try:
            ids = torch.tensor([[self.bos_token_id]], device=self.device)
            with torch.inference_mode():
                self.model.get_decoder()(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return [block_output(o)[0, 0] for o in outs], isinstance(outs[0], tuple)

    @contextlib.contextmanager
    def _identity_blocks(self) -> Iterator[list[Any]]:
        """Within the block every decoder block returns its input, and the arguments it is
        called with (after the hidden state) are recorded per block."""
        calls: list[Any] = [None] * len(self.layers)

        def pre_hook(k: int):
            def fn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                calls[k] = (args[1:], dict(kwargs))
            return fn

        def identity(hidden_states: torch.Tensor, *_a: Any, **_k: Any) -> Any:
            return (hidden_states,) if self._returns_tuple else hidden_states

        handles = [layer.register_forward_pre_hook(pre_hook(k), with_kwargs=True)
                   for k, layer in enumerate(self.layers)]
        for layer in self.layers:
            layer.forward = identity
        try:
            yield calls
        finally:
            for layer in self.layers:
                del layer.forward  # back to the class's forward
            for h in handles:
                h.remove()

    def _token_ce(self, h_last: torch.Tensor, ids: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        """Per-position next-token CE [B, L] float64 (0 outside ``mask``), head in row chunks."""
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        out = torch.zeros(mask.shape, dtype=torch.float64, device=h_last.device)
        idx = mask.nonzero(as_tuple=True)
        rows, tgt = h_last[idx], targets[idx]
        ce = torch.empty(len(rows), dtype=torch.float64, device=h_last.device)
        for s in range(0, len(rows), self.head_chunk):
            logits = logits_from_last_hidden(self.model, rows[s:s + self.head_chunk]).float()
            pick = logits.gather(1, tgt[s:s + self.head_chunk, None])[:, 0]
            ce[s:s + self.head_chunk] = (torch.logsumexp(logits, 1) - pick).double()
        out[idx] = ce
        return out

    def clean_ce(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The unmodified model's per-position CE [B, L] (0 outside ``mask``)."""
        last: list[torch.Tensor] = []
        handle = self.layers[-1].register_forward_hook(
            lambda _m, _a, out: last.append(block_output(out)))
        t_ids = torch.from_numpy(ids).to(self.device)
        try:
            with torch.inference_mode():
                self.model.get_decoder()(input_ids=t_ids, use_cache=False)
                ce = self._token_ce(last[0], t_ids, torch.from_numpy(mask).to(self.device))
        finally:
            handle.remove()
        return ce.cpu().numpy()

    def substituted_ce(self, ids: np.ndarray, mask: np.ndarray, layer: int,
                       states: np.ndarray) -> np.ndarray:
        """Per-position CE [B, L] when ``states`` [B, L, d] replace block ``layer``'s output."""
        t_ids = torch.from_numpy(ids).to(self.device)
        with torch.inference_mode():
            with self._identity_blocks() as calls:
                self.model.get_decoder()(input_ids=t_ids, use_cache=False)
            h = torch.from_numpy(states).to(device=self.device,
                                            dtype=self.bos_states[layer].dtype)
            for k in range(layer + 1, len(self.layers)):
                args, kwargs = calls[k]
                h = block_output(self.layers[k](h, *args, **kwargs))
            ce = self._token_ce(h, t_ids, torch.from_numpy(mask).to(self.device))
        return ce.cpu().numpy()

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < len(self.layers):
            raise SAEMatchError(f"layer {layer} out of range: the model has {len(self.layers)} "
                                "decoder layers")


def clean_loss(tail: Tail, tokens: np.ndarray, mask: np.ndarray, batch_size: int = 8,
               progress: bool = True) -> np.ndarray:
    """The unmodified model's CE at every position of ``mask`` [n_seq, L] (0 elsewhere)."""
    out = np.zeros(tokens.shape)
    for s in tqdm(range(0, len(tokens), batch_size), desc="clean loss", unit="batch",
                  disable=not progress):
        out[s:s + batch_size] = tail.clean_ce(tokens[s:s + batch_size], mask[s:s + batch_size])
    return out


def delta_loss(tail: Tail, tokens: np.ndarray, mask: np.ndarray, clean: np.ndarray, layer: int,
               substitutes: Mapping[str, np.ndarray], *, batch_size: int = 8,
               progress: bool = True) -> dict[str, np.ndarray]:
    """Per-sequence sum of ``CE(substituted) - CE(clean)`` over ``mask`` for each substitute.

    ``substitutes`` [n_tok, d] hold layer ``layer``'s stand-in at the non-BOS positions of
    ``tokens`` in sequence-major order (the order of the stored activations); BOS positions keep
    their true state.
    """
    tail.check_layer(layer)
    keep = tokens != tail.bos_token_id
    n_keep = int(keep.sum())
    for name, sub in substitutes.items():
        if sub.shape != (n_keep, tail.bos_states[layer].shape[0]):
            raise SAEMatchError(f"substitute {name}: shape {sub.shape}, expected "
                                f"({n_keep}, {tail.bos_states[layer].shape[0]})")
    starts = np.concatenate([[0], np.cumsum(keep.sum(1))])
    bos = tail.bos_states[layer].float().cpu().numpy()
    out = {name: np.zeros(len(tokens)) for name in substitutes}
    bar = tqdm(total=len(substitutes) * -(-len(tokens) // batch_size), desc=f"delta loss L{layer}",
               unit="batch", disable=not progress)
    for name, sub in substitutes.items():
        for s in range(0, len(tokens), batch_size):
            rows = slice(s, min(s + batch_size, len(tokens)))
            states = np.broadcast_to(bos, keep[rows].shape + bos.shape).copy()
            states[keep[rows]] = sub[starts[rows.start]:starts[rows.stop]]
            ce = tail.substituted_ce(tokens[rows], mask[rows], layer, states)
            out[name][rows] = ((ce - clean[rows]) * mask[rows]).sum(1)
            bar.update()
    bar.close()
    return out
