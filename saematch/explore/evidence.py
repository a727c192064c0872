"""Evidence for every feature of one SAE: what it fires on, what it writes, what others call it.

- **Top contexts** (sources with text): the SAE encodes the held-out activations the workflow
  already stored (no second model pass); for each feature the ``k`` token positions with the
  largest activation are kept, each with a snippet of ``before`` tokens before and ``after``
  tokens after the firing token, and the feature's activation on every snippet token.
  Firing frequency = fraction of held-out tokens where the feature is > 0; mean activation is
  over those tokens only.
- **Logit lens** (data-free, wherever the model's unembedding is at hand): the decoder row
  times the final norm's elementwise scale (``1 + w`` for Gemma's RMSNorm, ``w`` otherwise, as
  TransformerLens folds it into ``W_U``) times the unembedding; the ``m`` most promoted and most
  suppressed tokens. The LayerNorm centering of GPT-2-like models is not applied.
- **Neuronpedia**: the SAE's id (``model/source``) from its fetch manifest's ``neuronpedia_id``
  key when present, else from a config template; the explanation text from a local copy of
  Neuronpedia's explanation export (``{root}/{model}/{source}/explanations/*.jsonl[.gz]``,
  records with ``modelId``, ``layer`` = source, ``index``, ``description``).

One HDF5 file per width x layer (schema in :func:`write_evidence`). Token ids are decoded once,
into a table stored with the file, so readers need no tokenizer.
"""
from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..atomic import PathLike, atomic_path
from ..errors import SAEMatchError
from ..sae import SAE

log = logging.getLogger("saematch")



@dataclass
class Evidence:
    """Everything known about the features of one SAE; optional parts are ``None``."""

    layer: int
    threshold: np.ndarray  # [n]
    neuronpedia_id: str = ""
    n_tokens: int = 0  # held-out tokens scanned
    datasets: list[str] = field(default_factory=list)
    freq: np.ndarray | None = None  # [n]
    mean_act: np.ndarray | None = None  # [n], over firing tokens; 0 where it never fires
    ctx_tokens: np.ndarray | None = None  # [n, k, W] int32 token ids, -1 = none
    ctx_acts: np.ndarray | None = None  # [n, k, W] float32, the feature on each snippet token
    ctx_dataset: np.ndarray | None = None  # [n, k] int8 index into datasets, -1 = no context
    ctx_offset: int = 0  # snippet position of the firing token
    logit_top: np.ndarray | None = None  # [n, m] int32 token ids, most promoted first
    logit_top_val: np.ndarray | None = None
    logit_bottom: np.ndarray | None = None  # most suppressed first
    logit_bottom_val: np.ndarray | None = None
    explanation: list[str] | None = None
    vocab: dict[int, str] = field(default_factory=dict)  # every token id used above -> text

    @property
    def n_features(self) -> int:
        return len(self.threshold)

    @property
    def has_contexts(self) -> bool:
        return self.ctx_tokens is not None

    @property
    def has_logit_lens(self) -> bool:
        return self.logit_top is not None

    def firing_tokens(self) -> np.ndarray:
        """[n, k] token id at the firing position of each top context (-1 = no context)."""
        return self.ctx_tokens[:, :, self.ctx_offset]

    def neuronpedia_url(self, index: int) -> str:
        from ..sources import neuronpedia_url

        return neuronpedia_url(self.neuronpedia_id, index) if self.neuronpedia_id else ""


# --- top contexts --------------------------------------------------------------------------

@dataclass
class HeldOut:
    """Held-out activations of one layer, concatenated over datasets, with their tokens."""

    x: np.ndarray  # [N, d] float32, rows in sequence-major order of kept positions
    tokens: np.ndarray  # [S, seq_len] int64, every dataset's sequences stacked
    row_of: np.ndarray  # [S, seq_len] int64 row of x for each position, -1 where not stored
    seq_dataset: np.ndarray  # [S] int index into ``datasets``
    datasets: list[str]


def load_held_out(activations: Sequence[PathLike], corpora: Sequence[PathLike],
                  layer: int) -> HeldOut:
    """One layer's held-out activations and the token sequences they came from, every dataset
    stacked in the order of ``corpora`` (files paired by the dataset each records)."""
    from ..lm.heldout import read_heldout

    held = read_heldout(corpora, activations)
    xs, toks, keeps, seq_ds = [], [], [], []
    for j, h in enumerate(held.values()):
        x = h.states(layer)
        if len(x) != h.keep.sum():
            raise SAEMatchError(f"{h.path}: layer_{layer} has {len(x)} rows, the keep mask "
                                f"marks {int(h.keep.sum())} positions")
        xs.append(x)
        toks.append(h.tokens)
        keeps.append(h.keep)
        seq_ds.append(np.full(len(h.tokens), j))
    if len({t.shape[1] for t in toks}) > 1:
        raise SAEMatchError(f"held-out corpora {list(corpora)} have different sequence lengths")
    keep = np.concatenate(keeps)
    row_of = np.full(keep.shape, -1, dtype=np.int64)
    row_of[keep] = np.arange(int(keep.sum()))
    return HeldOut(np.concatenate(xs), np.concatenate(toks), row_of, np.concatenate(seq_ds),
                   list(held))


def activation_stats(sae: SAE, x: np.ndarray, k: int,
                     batch: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature: firing count, summed activation, and the rows and values of its ``k``
    largest activations (rows [k, n], -1 where fewer than k positive activations; values
    descending)."""
    n = sae.n_features
    fired = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.float64)
    top_val = np.zeros((k, n), dtype=np.float32)
    top_row = np.full((k, n), -1, dtype=np.int64)
    for start in range(0, len(x), batch):
        codes = sae.encode(x[start:start + batch])
        fired += (codes > 0).sum(0)
        total += codes.sum(0, dtype=np.float64)
        rows = np.broadcast_to(np.arange(start, start + len(codes))[:, None], codes.shape)
        cand_val = np.concatenate([top_val, codes])
        cand_row = np.concatenate([top_row, rows])
        keep = np.argpartition(-cand_val, k - 1, axis=0)[:k] if len(cand_val) > k else \
            np.argsort(-cand_val, axis=0, kind="stable")
        top_val = np.take_along_axis(cand_val, keep, 0)
        top_row = np.take_along_axis(cand_row, keep, 0)
    order = np.argsort(-top_val, axis=0, kind="stable")
    top_val = np.take_along_axis(top_val, order, 0)
    top_row = np.where(top_val > 0, np.take_along_axis(top_row, order, 0), -1)
    return fired, total, top_row.T.copy(), top_val.T.copy()


def top_contexts(sae: SAE, held: HeldOut, k: int, before: int, after: int,
                 chunk: int = 128) -> dict[str, np.ndarray]:
    """Frequency, mean activation and the top-``k`` snippets of every feature (see module)."""
    n, N = sae.n_features, len(held.x)
    if N == 0:
        raise SAEMatchError("no held-out tokens to find top contexts in")
    fired, total, top_row, _ = activation_stats(sae, held.x, k)
    seq_of_row, pos_of_row = np.nonzero(held.row_of >= 0)  # row r sits at (seq, pos)
    width = before + 1 + after
    valid = top_row >= 0
    seq = np.where(valid, seq_of_row[np.maximum(top_row, 0)], 0)
    pos = np.where(valid, pos_of_row[np.maximum(top_row, 0)], 0)
    win = pos[:, :, None] + np.arange(-before, after + 1)  # [n, k, W]
    inside = valid[:, :, None] & (win >= 0) & (win < held.tokens.shape[1])
    win_c = np.clip(win, 0, held.tokens.shape[1] - 1)
    rows = np.where(inside, held.row_of[seq[:, :, None], win_c], -1)  # BOS: -1
    tokens = np.where(rows >= 0, held.tokens[seq[:, :, None], win_c], -1).astype(np.int32)
    acts = np.zeros((n, k, width), dtype=np.float32)
    for s in range(0, n, chunk):  # the feature's own activation on each snippet token
        r = rows[s:s + chunk]
        xs = held.x[np.maximum(r, 0)]  # [c, k, W, d]
        pre = np.einsum("ckwd,dc->ckw", xs, sae.W_enc[:, s:s + chunk]) + \
            sae.b_enc[s:s + chunk, None, None]
        f = pre * (pre > sae.threshold[s:s + chunk, None, None])
        acts[s:s + chunk] = np.where(r >= 0, f, 0)
    return {"freq": fired / N,
            "mean_act": np.where(fired > 0, total / np.maximum(fired, 1), 0.0),
            "ctx_tokens": tokens, "ctx_acts": acts,
            "ctx_dataset": np.where(valid, held.seq_dataset[seq], -1).astype(np.int8)}


# --- logit lens ----------------------------------------------------------------------------

_UNEMBED = ("lm_head.weight", "embed_out.weight", "model.embed_tokens.weight",
            "transformer.wte.weight", "gpt_neox.embed_in.weight")
_FINAL_NORM = ("model.norm.weight", "transformer.ln_f.weight",
               "gpt_neox.final_layer_norm.weight")


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF model folder (one file or an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise SAEMatchError(f"{model_dir}: no model.safetensors(.index.json); the logit lens "
                            "needs the model's weights as safetensors")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {k: single for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def _read_tensor(files: dict[str, Path], names: Sequence[str], what: str, model_dir: Path):
    from safetensors import safe_open

    for name in names:
        if name in files:
            with safe_open(str(files[name]), "pt") as f:
                return f.get_tensor(name).float()
    raise SAEMatchError(f"{model_dir}: no {what} tensor (looked for {list(names)})")


def unembedding(model_dir: PathLike):
    """``(W_U [vocab, d], scale [d])`` as float32 torch tensors, read with safetensors.

    ``scale`` is the final norm's elementwise scale (Gemma: ``1 + w``), which TransformerLens
    folds into its ``W_U``; tied models use the input embedding.
    """
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SAEMatchError(f"{model_dir}: cannot read config.json ({exc})") from exc
    files = _tensor_files(model_dir)
    w_u = _read_tensor(files, _UNEMBED, "unembedding", model_dir)
    norm = _read_tensor(files, _FINAL_NORM, "final norm", model_dir)
    if str(config.get("model_type", "")).startswith("gemma"):
        norm = 1.0 + norm
    if w_u.shape[1] != norm.shape[0]:
        raise SAEMatchError(f"{model_dir}: unembedding {tuple(w_u.shape)} and final norm "
                            f"{tuple(norm.shape)} disagree")
    return w_u, norm


def logit_lens(W_dec: np.ndarray, model_dir: PathLike, m: int, device: str = "auto",
               chunk: int = 128) -> dict[str, np.ndarray]:
    """The ``m`` most promoted and most suppressed tokens of every decoder row."""
    import torch

    from ..device import pick_device

    w_u, scale = unembedding(model_dir)
    if w_u.shape[1] != W_dec.shape[1]:
        raise SAEMatchError(f"{model_dir}: model d_model {w_u.shape[1]} but the SAE decoder has "
                            f"d_model {W_dec.shape[1]}")
    dev = pick_device(device)
    w_u = w_u.to(dev)
    rows = torch.from_numpy(np.ascontiguousarray(W_dec, dtype=np.float32)).to(dev) * \
        scale.to(dev)
    out = {k: [] for k in ("logit_top", "logit_top_val", "logit_bottom", "logit_bottom_val")}
    with torch.inference_mode():
        for s in range(0, len(rows), chunk):
            logits = rows[s:s + chunk] @ w_u.T
            top = torch.topk(logits, m, dim=1)
            bottom = torch.topk(logits, m, dim=1, largest=False)
            out["logit_top"].append(top.indices.cpu().numpy().astype(np.int32))
            out["logit_top_val"].append(top.values.cpu().numpy())
            out["logit_bottom"].append(bottom.indices.cpu().numpy().astype(np.int32))
            out["logit_bottom_val"].append(bottom.values.cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def decode_tokens(model_dir: PathLike, ids: np.ndarray) -> dict[int, str]:
    """Text of each token id (leading spaces kept), from the folder's ``tokenizer.json``."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot load the tokenizer ({exc})") from exc
    return {int(i): tok.decode([int(i)], skip_special_tokens=False) for i in np.unique(ids)
            if i >= 0}


# --- Neuronpedia ---------------------------------------------------------------------------

def neuronpedia_id(sae_source: PathLike, template: str | None, layer: int, width: str) -> str:
    """The id an SAE records (fetch manifest or SAELens metadata), else the config template,
    else ''."""
    from ..sources import neuronpedia_id as recorded

    return recorded(sae_source) or (template.format(layer=layer, width=width) if template else "")


def explanations_dir(root: PathLike, np_id: str) -> Path:
    """Where Neuronpedia's export keeps one source's explanations."""
    return Path(root) / np_id / "explanations"


def read_explanations(root: PathLike, np_id: str, n_features: int) -> list[str]:
    """The first non-empty ``description`` of each feature in the export ('' where none)."""
    folder = explanations_dir(root, np_id)
    if not Path(root).is_dir():
        raise SAEMatchError(f"explanations export {root}: not a folder")
    out = [""] * n_features
    if not folder.is_dir():
        log.warning("no Neuronpedia explanations for %s under %s", np_id, folder)
        return out
    model, source = np_id.split("/", 1)
    files = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.jsonl.gz"))
    for file in files:
        opener = gzip.open if file.suffix == ".gz" else open
        try:
            with opener(file, "rt", encoding="utf-8") as fh:
                lines = list(fh)
        except (OSError, EOFError) as exc:
            raise SAEMatchError(f"{file}: cannot read ({exc})") from exc
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec.get("modelId") != model or rec.get("layer") != source:
                    continue
                i = int(rec["index"])
            except (ValueError, KeyError, AttributeError) as exc:
                raise SAEMatchError(f"{file}: line {line_no} is not a Neuronpedia explanation "
                                    f"record ({exc})") from exc
            if 0 <= i < n_features and not out[i] and rec.get("description"):
                out[i] = str(rec["description"]).strip()
    log.info("%s: explanations for %d of %d features", np_id, sum(map(bool, out)), n_features)
    return out


# --- the file ------------------------------------------------------------------------------

_ARRAYS = ("freq", "mean_act", "ctx_tokens", "ctx_acts", "ctx_dataset", "logit_top",
           "logit_top_val", "logit_bottom", "logit_bottom_val")


def _write_strings(h5: h5py.File, name: str, texts: list[str]) -> None:
    """Strings as one UTF-8 byte array ``{name}`` plus ``{name}_offsets``: HDF5's own
    variable-length strings end at a NUL byte, and some tokens (Gemma's ``<0x00>``) are one."""
    raw = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in raw], out=offsets[1:])
    h5.create_dataset(name, data=np.frombuffer(b"".join(raw), dtype=np.uint8))
    h5.create_dataset(f"{name}_offsets", data=offsets)


def _read_strings(h5: h5py.File, name: str) -> list[str]:
    raw, off = h5[name][()].tobytes(), h5[f"{name}_offsets"][()]
    return [raw[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])]


def write_evidence(path: PathLike, ev: Evidence) -> None:
    """HDF5: ``threshold`` and whichever of ``freq``, ``mean_act``, ``ctx_*``, ``logit_*``,
    ``explanation`` exist; ``vocab_ids``/``vocab_text`` decode every token id used; attributes
    ``layer``, ``neuronpedia_id``, ``n_tokens``, ``datasets``, ``ctx_offset``."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("threshold", data=ev.threshold.astype(np.float32))
        for name in _ARRAYS:
            arr = getattr(ev, name)
            if arr is not None:
                h5.create_dataset(name, data=arr, compression="gzip", compression_opts=4)
        if ev.explanation is not None:
            _write_strings(h5, "explanation", ev.explanation)
        ids = np.array(sorted(ev.vocab), dtype=np.int32)
        h5.create_dataset("vocab_ids", data=ids)
        _write_strings(h5, "vocab_text", [ev.vocab[i] for i in ids.tolist()])
        h5.attrs.update(layer=ev.layer, neuronpedia_id=ev.neuronpedia_id, n_tokens=ev.n_tokens,
                        datasets=json.dumps(ev.datasets), ctx_offset=ev.ctx_offset)


def read_evidence(path: PathLike) -> Evidence:
    try:
        with h5py.File(path, "r") as h5:
            arrays = {k: h5[k][()] for k in _ARRAYS if k in h5}
            expl = _read_strings(h5, "explanation") if "explanation" in h5 else None
            vocab = dict(zip(h5["vocab_ids"][()].tolist(), _read_strings(h5, "vocab_text")))
            a = h5.attrs
            return Evidence(layer=int(a["layer"]), threshold=h5["threshold"][()],
                            neuronpedia_id=str(a["neuronpedia_id"]), n_tokens=int(a["n_tokens"]),
                            datasets=json.loads(a["datasets"]), ctx_offset=int(a["ctx_offset"]),
                            explanation=expl, vocab=vocab, **arrays)
    except (OSError, KeyError) as exc:
        raise SAEMatchError(f"{path}: cannot read evidence ({exc})") from exc


def build_evidence(sae: SAE, layer: int, *, held: HeldOut | None = None,
                   model_dir: PathLike | None = None, np_id: str = "",
                   explanations_root: PathLike | None = None, contexts: int = 10,
                   before: int = 12, after: int = 4, logit_tokens: int = 10,
                   device: str = "auto") -> Evidence:
    """Gather whatever evidence the inputs allow (see module docstring)."""
    ev = Evidence(layer=layer, threshold=sae.threshold, neuronpedia_id=np_id)
    if held is not None:
        if model_dir is None:
            raise SAEMatchError(f"layer {layer}: contexts need the model folder (tokenizer)")
        ctx = top_contexts(sae, held, contexts, before, after)
        for k, v in ctx.items():
            setattr(ev, k, v)
        ev.ctx_offset, ev.n_tokens, ev.datasets = before, len(held.x), held.datasets
        log.info("layer %d: contexts from %d held-out tokens; %d of %d features fire", layer,
                 len(held.x), int((ev.freq > 0).sum()), sae.n_features)
    if model_dir is not None:
        for k, v in logit_lens(sae.W_dec, model_dir, logit_tokens, device).items():
            setattr(ev, k, v)
        used = [a for a in (ev.ctx_tokens, ev.logit_top, ev.logit_bottom) if a is not None]
        ev.vocab = decode_tokens(model_dir, np.concatenate([a.ravel() for a in used]))
    if explanations_root is not None and np_id:
        ev.explanation = read_explanations(explanations_root, np_id, sae.n_features)
    return ev
