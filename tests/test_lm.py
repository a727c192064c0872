"""Real-model library (saematch.lm) on synthetic data and tiny random HF models: no downloads."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from saematch import bootstrap
from saematch.errors import SAEMatchError
from saematch.lm.activations import collect_activations, read_activations
from saematch.lm.matching_score import matching_score
from saematch.lm.model import ModelSpec, decoder_layers, export_model, load_model
from saematch.lm.substitution import Tail, clean_loss, delta_loss, loss_mask
from saematch.lm.text import TextSource, build_corpus, read_corpus, split_files, write_corpus
from saematch.lm.train import TrainConfig, _JumpReLUSAE, quality_flag, train_sae
from saematch.sae import SAE, fold

transformers = pytest.importorskip("transformers")

BOS = 2


def tiny_model(arch: str) -> torch.nn.Module:
    """A randomly initialised 4-layer model with sliding-window layers (Gemma 3) or soft-capping."""
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, bos_token_id=BOS,
                  pad_token_id=0, sliding_window=6)
    if arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(
            **common, layer_types=["sliding_attention", "full_attention"] * 2)
        model = transformers.Gemma3ForCausalLM(cfg)
    else:
        cfg = transformers.Gemma2Config(**common, final_logit_softcapping=5.0)
        model = transformers.Gemma2ForCausalLM(cfg)
    return model.eval().requires_grad_(False)


def tiny_tokens(n_seq: int = 5, seq_len: int = 16) -> np.ndarray:
    rng = np.random.default_rng(1)
    tok = rng.integers(3, 97, size=(n_seq, seq_len))
    tok[:, 0] = BOS
    return tok


def sparse_data(n: int, d: int = 32, m: int = 48, k: int = 3, seed: int = 0) -> np.ndarray:
    """Tokens that are sums of k of m known unit directions (magnitudes 1-3) plus a mean."""
    rng = np.random.default_rng(seed)
    dic = rng.standard_normal((m, d))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for row in codes:
        row[rng.choice(m, k, replace=False)] = rng.uniform(1, 3, k)
    return (codes @ dic + 5.0 * rng.standard_normal(d)).astype(np.float32)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tensors are tiny: a second thread only adds synchronisation (10x slower CPU time
    on a loaded 2-core machine), and the workflow runs each job with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> tuple[np.ndarray, SAE, dict]:
    x = sparse_data(12000)
    cfg = TrainConfig(n_features=64, target_l0=4, batch_size=64, epochs=5, seed=3)
    sae, card = train_sae(x[:10000], x[10000:], cfg, progress=False)
    return x, sae, card


def test_training_learns_sparse_dictionary(trained):
    _, sae, card = trained
    # 10k tokens is far too few to recover the planted dictionary (L0 3, FVU 0); these bounds
    # only say that training works (an untrained SAE has FVU ~1 or L0 ~n/2).
    assert card["fvu"] < 0.1
    assert card["dead_fraction"] < 0.1
    assert (sae.threshold > 0).all()
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=1), 1.0, atol=1e-5)
    assert card["tokens_seen"] == card["steps"] * 64
    assert quality_flag(card) == []


@pytest.mark.parametrize("target", [2.0, 8.0])
def test_l0_control_holds_the_target(trained, target):
    """Held-out L0 follows target_l0 (what the default run promises per layer), not lambda."""
    x, _, card = trained
    cfg = TrainConfig(**{**card["hyperparameters"], "target_l0": target, "epochs": 2})
    _, c = train_sae(x[:10000], x[10000:], cfg, progress=False)
    assert c["l0"] == pytest.approx(target, rel=0.25)


def test_training_is_deterministic_and_scale_free(trained):
    """Same seed, same data -> same SAE; data x 8 -> the same SAE with b, theta scaled by 8.

    The second half checks that centring and scaling are folded back correctly: the saved SAE
    must act on raw activations. (A power of two keeps the transformed data bit-identical.)
    """
    x, sae, card = trained
    cfg = TrainConfig(**card["hyperparameters"])
    again, _ = train_sae(x[:10000], x[10000:], cfg, progress=False)
    np.testing.assert_array_equal(again.W_enc, sae.W_enc)
    np.testing.assert_array_equal(again.threshold, sae.threshold)
    big, big_card = train_sae(8 * x[:10000], 8 * x[10000:], cfg, progress=False)
    np.testing.assert_allclose(big.W_enc, sae.W_enc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(big.threshold, 8 * sae.threshold, rtol=1e-6)
    np.testing.assert_allclose(big.b_dec, 8 * sae.b_dec, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(big.b_enc, 8 * sae.b_enc, rtol=1e-5, atol=1e-5)
    assert big_card["fvu"] == pytest.approx(card["fvu"], abs=1e-6)


def test_bf16_training_matches_float32_quality(trained):
    x, _, card = trained
    cfg = TrainConfig(**{**card["hyperparameters"], "bf16": True, "epochs": 2})
    sae16, card16 = train_sae(x[:10000], x[10000:], cfg, progress=False)
    assert card16["fvu"] == pytest.approx(card["fvu"], abs=0.05)
    assert sae16.W_enc.dtype == np.float32 and (sae16.threshold > 0).all()


def test_firing_rate_floor_keeps_features_alive():
    """A dictionary twice too wide for its data: without the floor a fifth of the features
    never fire again; with it nearly all fire on held-out data, and reconstruction is as good."""
    x = sparse_data(12000, m=24, k=2)
    cards = {}
    for floor in (0.0, 0.003):
        cfg = TrainConfig(n_features=128, target_l0=3, batch_size=64, epochs=3, seed=5,
                          min_firing_rate=floor)
        _, cards[floor] = train_sae(x[:10000], x[10000:], cfg, progress=False)
    assert cards[0.0]["dead_fraction"] > 0.1
    assert cards[0.003]["dead_fraction"] < cards[0.0]["dead_fraction"] / 2
    assert cards[0.003]["fvu"] <= cards[0.0]["fvu"] + 0.01


def test_written_out_gradients_match_autograd():
    """The hand-written backward pass equals autograd of the same loss, with the JumpReLU's
    rectangle-kernel pseudo-derivative for the threshold spelled out independently."""
    torch.manual_seed(0)
    d, n, m, eps, lam = 12, 20, 40, 0.5, 0.7
    sae = _JumpReLUSAE(d, n, torch.device("cpu"), bf16=False)
    x = torch.randn(m, d)
    sae.init_from(torch.randn(n, d), x, rate=0.3)
    sae.W_enc += 0.1 * torch.randn(d, n)
    sae.b_enc += 0.1 * torch.randn(n)
    sae.b_dec += 0.1 * torch.randn(d)
    grads, l0, counts = sae.grads(x, lam, eps)

    class Heaviside(torch.autograd.Function):
        @staticmethod
        def forward(ctx, pre, theta):
            ctx.save_for_backward(pre, theta)
            return (pre > theta).float()

        @staticmethod
        def backward(ctx, g):
            pre, theta = ctx.saved_tensors
            kernel = ((pre - theta).abs() < eps / 2).float() / eps
            return None, -(kernel * g).sum(0)

    p = {k: v.clone().requires_grad_(True) for k, v in sae.params().items()}
    theta = p["log_threshold"].exp()
    pre = x @ p["W_enc"] + p["b_enc"]
    gate = (pre > theta).float()
    # f = pre * H(pre - theta): d/dpre through `gate`, d/dtheta = -theta * K (JumpReLU paper).
    f = pre * gate + theta.detach() * (Heaviside.apply(pre.detach(), theta)
                                       - Heaviside.apply(pre.detach(), theta).detach())
    loss = ((f @ p["W_dec"] + p["b_dec"] - x) ** 2).sum(1).mean()
    loss = loss + lam * Heaviside.apply(pre.detach(), theta).sum(1).mean()
    loss.backward()
    for k in p:
        torch.testing.assert_close(grads[k], p[k].grad, rtol=1e-4, atol=1e-5, msg=k)
    assert l0 == pytest.approx(float(gate.sum(1).mean()))
    assert torch.equal(counts, gate.sum(0).long())


def test_train_config_defaults_are_the_schema_defaults():
    """config.yaml's lm.train is filled from the schema; TrainConfig is what code callers get.
    Both must be the tuned defaults, or the workflow and the API train different SAEs."""
    import dataclasses

    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "schemas/config.schema.yaml").read_text())
    props = schema["properties"]["lm"]["properties"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)
              if f.name not in ("n_features", "seed")}
    assert {k: v["default"] for k, v in props.items()} == fields


def test_quality_flag_names_each_problem():
    card = {"hyperparameters": {"n_features": 100}, "fvu": 0.7, "l0": 60.0,
            "dead_fraction": 0.9}
    reasons = quality_flag(card)
    assert len(reasons) == 3 and "FVU" in reasons[0] and "L0" in reasons[1]


# ---------------------------------------------------------------- substitution


@pytest.mark.parametrize("arch", ["gemma3", "gemma2"])
def test_substitution_true_state_is_exact(arch):
    """Replaying the later blocks on the true state reproduces the model: delta loss 0, and the
    clean loss is the model's own loss without predictions made at BOS."""
    model = tiny_model(arch)
    tokens = tiny_tokens()
    tail = Tail(model, BOS, head_chunk=7)
    mask = loss_mask(tokens, BOS)
    clean = clean_loss(tail, tokens, mask, batch_size=2, progress=False)
    ids = torch.from_numpy(tokens)
    labels = ids.clone()
    labels[:, 1] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    assert clean.sum() / mask.sum() == pytest.approx(float(out.loss), abs=1e-5)
    keep = tokens != BOS
    states = {L: out.hidden_states[L + 1][torch.from_numpy(keep)].numpy() for L in range(4)}
    for layer in (0, 2):
        np.testing.assert_allclose(tail.bos_states[layer].numpy(),
                                   out.hidden_states[layer + 1][0, 0].numpy(), atol=1e-5)
        dl = delta_loss(tail, tokens, mask, clean, layer,
                        {"true": states[layer], "skip": states[layer - 1] if layer else
                         states[layer] * 0.5}, batch_size=2, progress=False)
        assert np.abs(dl["true"]).max() < 1e-5
        assert np.abs(dl["skip"]).sum() > 1e-3
    strided = loss_mask(tokens, BOS, stride=3)
    assert strided.sum() == 4 * len(tokens) and not strided[:, 0].any()


def test_substitution_rejects_bad_layers_and_shapes():
    model = tiny_model("gemma3")
    tokens = tiny_tokens()
    tail = Tail(model, BOS)
    mask = loss_mask(tokens, BOS)
    clean = np.zeros(tokens.shape)
    good = np.zeros((int((tokens != BOS).sum()), 32), dtype=np.float32)
    with pytest.raises(SAEMatchError, match="out of range"):
        delta_loss(tail, tokens, mask, clean, 4, {"t": good}, progress=False)
    with pytest.raises(SAEMatchError, match="shape"):
        delta_loss(tail, tokens, mask, clean, 1, {"bad": good[:3]}, progress=False)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_interval_covers_the_truth():
    """95% intervals of a ratio of sums over iid sequences cover the true ratio about 95% of
    the time, and paired differences are judged only outside their interval."""
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        count = rng.integers(20, 60, 40).astype(float)
        num = rng.normal(0.3 * count, 2.0)
        w = bootstrap.resample_weights(40, 500, seed=trial)
        lo, hi = bootstrap.interval(bootstrap.ratio(num, count, w))
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99
    w = bootstrap.resample_weights(30, 400)
    base = rng.normal(1.0, 1.0, 30)
    ones = np.ones(30)
    a, b = bootstrap.ratio(base + 0.5, ones, w), bootstrap.ratio(base, ones, w)
    assert bootstrap.verdict(a - b, higher_is_better=True) == "better"
    assert bootstrap.verdict(a - b, higher_is_better=False) == "worse"
    noisy = bootstrap.ratio(base + rng.normal(0, 1.0, 30) * 0.01, ones, w)
    assert bootstrap.verdict(noisy - b, higher_is_better=True) == "tie"


def test_bootstrap_explained_variance_matches_the_direct_formula():
    from saematch.lm.substitution import sequence_moments, squared_errors
    from saematch.lm.train import explained_variance

    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 1.5, (500, 8)).astype(np.float32)
    x_hat = x + rng.normal(0, 0.7, x.shape).astype(np.float32)
    seq = np.sort(rng.integers(0, 25, 500))
    mom = sequence_moments(x, seq, 25)
    sse = squared_errors(x_hat, x, seq, 25)
    assert bootstrap.explained_variance(sse, **mom) == pytest.approx(
        explained_variance(x_hat, x), abs=1e-9)
    reps = bootstrap.explained_variance(sse, **mom, weights=bootstrap.resample_weights(25, 300))
    lo, hi = bootstrap.interval(reps)
    assert lo < explained_variance(x_hat, x) < hi and hi - lo < 0.2


def test_activations_hold_every_layer_as_block_outputs(tmp_path: Path):
    model = tiny_model("gemma3")
    tokens = tiny_tokens()
    path = tmp_path / "acts.h5"
    collect_activations(model, tokens, path, bos_token_id=BOS, batch_size=2)
    # HF's last hidden state has the final norm applied; the last block's output is its input.
    final_norm_input = []
    handle = model.model.norm.register_forward_pre_hook(
        lambda _m, args: final_norm_input.append(args[0]))
    with torch.no_grad():
        hs = model(input_ids=torch.from_numpy(tokens), output_hidden_states=True).hidden_states
    handle.remove()
    expected = [*hs[1:4], final_norm_input[0]]
    keep = torch.from_numpy(tokens != BOS)
    for L in range(4):  # every decoder layer, whatever a workflow matches
        np.testing.assert_allclose(read_activations(path, L), expected[L][keep].numpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(SAEMatchError, match="layer 4"):
        read_activations(path, 4)
    assert not list(tmp_path.glob(".*tmp*"))


def test_bfloat16_storage_round_trip(tmp_path: Path):
    """bfloat16 files are half the size and read back as float32, rounded to nearest."""
    model = tiny_model("gemma3")
    tokens = tiny_tokens(n_seq=8, seq_len=32)
    collect_activations(model, tokens, tmp_path / "f32.h5", bos_token_id=BOS)
    collect_activations(model, tokens, tmp_path / "bf16.h5", bos_token_id=BOS, dtype="bfloat16")
    for L in range(4):
        exact = read_activations(tmp_path / "f32.h5", L)
        stored = read_activations(tmp_path / "bf16.h5", L)
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, torch.from_numpy(exact).bfloat16().float().numpy())
        np.testing.assert_allclose(stored, exact, rtol=2.0**-8, atol=0)
        assert read_activations(tmp_path / "bf16.h5", L, max_tokens=5).shape == (5, 32)
    size = {k: (tmp_path / f"{k}.h5").stat().st_size for k in ("f32", "bf16")}
    assert size["bf16"] < 0.6 * size["f32"]
    with pytest.raises(SAEMatchError, match="float16"):
        collect_activations(model, tokens, tmp_path / "x.h5", bos_token_id=BOS, dtype="float16")


# ---------------------------------------------------------------- matching score


def test_matching_score_recovers_the_true_permutation():
    d = n = 24
    rng = np.random.default_rng(12345)  # not the null's seed: its first draw would be q
    q = rng.permutation(n)
    eye = np.eye(d, dtype=np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    thr = np.full(n, 0.5, dtype=np.float32)
    sae_t = SAE(W_enc=eye, b_enc=zeros, W_dec=eye, b_dec=zeros, threshold=thr)
    # Layer t+1's feature q[i] reads coordinate i: the true matching is q.
    w = np.zeros((d, n), dtype=np.float32)
    w[np.arange(d), q] = 1
    sae_t1 = SAE(W_enc=w, b_enc=zeros, W_dec=w.T.copy(), b_dec=zeros, threshold=thr)
    x = (rng.random((2000, d)) < 0.1).astype(np.float32)
    ms = matching_score(sae_t, sae_t1, x, x, q, batch=300)
    assert ms.score == pytest.approx(1.0)
    assert ms.null == pytest.approx(0.1, abs=0.03)
    assert ms.n_supported == n
    assert matching_score(sae_t, sae_t1, x, x, np.arange(n)).score < 0.3
    # A folded SAE fires on the same tokens: the score does not depend on folding.
    assert matching_score(fold(sae_t), fold(sae_t1), x, x, q).score == pytest.approx(1.0)


# ---------------------------------------------------------------- corpus


class CharTokenizer:
    """Stand-in tokenizer: one token per character."""

    bos_token_id = BOS

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + ord(c) % 90 for c in text]}


def test_corpus_split_is_disjoint_deterministic_and_recorded(tmp_path: Path):
    for i in range(40):
        sub = tmp_path / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.txt").write_text(f"file {i} " * (5 + i))
    (tmp_path / "d0" / "skip.py").write_text("not matched")
    src = TextSource("toy", str(tmp_path), ".txt")
    files = src.files()
    assert len(files) == 40
    train, evals = split_files(files, 0.25)
    assert not set(train) & set(evals) and len(train) + len(evals) == 40
    assert (train, evals) == split_files(list(reversed(files)), 0.25)
    corpus = build_corpus(CharTokenizer(), src, train, seq_len=16, n_tokens=300,
                          max_seqs_per_file=2)
    assert corpus.tokens.shape == (19, 16) and (corpus.tokens[:, 0] == BOS).all()
    assert set(corpus.files) <= {f.as_posix() for f in train}
    assert np.bincount(corpus.seq_file).max() <= 2
    write_corpus(tmp_path / "c.h5", corpus)
    back = read_corpus(tmp_path / "c.h5")
    np.testing.assert_array_equal(back.tokens, corpus.tokens)
    assert back.files == corpus.files and back.meta == corpus.meta
    with pytest.raises(SAEMatchError, match="requested"):
        build_corpus(CharTokenizer(), src, train[:1], seq_len=16, n_tokens=10_000)


# ---------------------------------------------------------------- model loading


def save_tiny(folder: Path) -> torch.nn.Module:
    """A tiny Gemma 3 plus a word-level tokenizer, saved as a normal HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "c"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>",
                                               eos_token="<eos>", unk_token="<unk>",
                                               pad_token="<pad>")
    model = tiny_model("gemma3")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_load_and_export_a_local_model(tmp_path: Path):
    model = save_tiny(tmp_path / "src")
    loaded, tok = load_model(ModelSpec.from_config({"name": str(tmp_path / "src")}),
                             tokenizer=True)
    assert tok.bos_token_id == BOS and len(decoder_layers(loaded)) == 4
    assert not any(p.requires_grad for p in loaded.parameters())
    export_model(ModelSpec(str(tmp_path / "src")), tmp_path / "copy")
    again, no_tok = load_model(ModelSpec(str(tmp_path / "copy")))
    assert no_tok is None
    for (k, v), (_, w) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "src"]


def test_model_spec_sources(monkeypatch, tmp_path: Path):
    fake = types.ModuleType("fake_gguf_pkg")
    fake.assemble = lambda: tmp_path / "weights" / "m.gguf"
    monkeypatch.setitem(sys.modules, "fake_gguf_pkg", fake)
    assert ModelSpec("pymodule:fake_gguf_pkg").source() == (str(tmp_path / "weights"), "m.gguf")
    assert ModelSpec("org/name", gguf_file="x.gguf").source() == ("org/name", "x.gguf")
    with pytest.raises(SAEMatchError, match="cannot import"):
        ModelSpec("pymodule:no_such_module_here").source()
    with pytest.raises(SAEMatchError, match="needs 'name'"):
        ModelSpec.from_config({"gguf_file": "x"})
    with pytest.raises(SAEMatchError, match="cannot load"):
        load_model(ModelSpec(str(tmp_path / "missing")))
