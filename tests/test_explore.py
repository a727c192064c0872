"""Feature evidence, semantic scores and the LLM judge client (saematch.explore), on small
inputs whose answers are known; the judge against a chat-completions server on loopback."""
from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import h5py
import numpy as np
import pytest
import torch
from conftest import random_sae, tiny_model_folder

from saematch.errors import SAEMatchError
from saematch.explore import evidence as E
from saematch.explore import judge as J
from saematch.explore import semantic as S
from saematch.explore.chains import follow, maximal_chains
from saematch.results import PairKey


def held_out(sae, n_seq=6, seq_len=12, seed=0) -> E.HeldOut:
    """Random activations for every non-BOS position of random token sequences."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 200, (n_seq, seq_len))
    tokens[:, 0] = 2  # BOS, not stored
    keep = tokens != 2
    x = rng.standard_normal((int(keep.sum()), sae.d_model)).astype(np.float32)
    row_of = np.full(keep.shape, -1)
    row_of[keep] = np.arange(keep.sum())
    return E.HeldOut(x, tokens, row_of, np.repeat([0, 1], n_seq // 2), ["prose", "code"])


def test_top_contexts_equal_brute_force():
    sae = random_sae(n=40, d=8, seed=3)
    held = held_out(sae)
    k, before, after = 5, 3, 2
    ctx = E.top_contexts(sae, held, k, before, after, chunk=7)
    codes = sae.encode(held.x)
    np.testing.assert_allclose(ctx["freq"], (codes > 0).mean(0))
    fired = (codes > 0).sum(0)
    np.testing.assert_allclose(ctx["mean_act"][fired > 0],
                               codes.sum(0)[fired > 0] / fired[fired > 0], rtol=1e-5)
    seqs, poss = np.nonzero(held.row_of >= 0)
    for i in range(sae.n_features):
        best = np.sort(codes[:, i])[::-1][:k]
        n_ctx = int((best > 0).sum())
        assert (ctx["ctx_dataset"][i] >= 0).sum() == n_ctx
        np.testing.assert_allclose(ctx["ctx_acts"][i, :n_ctx, before], best[:n_ctx], rtol=1e-5)
        for c in range(n_ctx):  # the firing token and its neighbours come from the corpus
            row = np.flatnonzero(np.isclose(codes[:, i], ctx["ctx_acts"][i, c, before]))[0]
            s, p = seqs[row], poss[row]
            for w in range(-before, after + 1):
                tok = ctx["ctx_tokens"][i, c, before + w]
                q = p + w
                if 1 <= q < held.tokens.shape[1]:
                    assert tok == held.tokens[s, q]
                    np.testing.assert_allclose(ctx["ctx_acts"][i, c, before + w],
                                               codes[held.row_of[s, q], i], rtol=1e-4, atol=1e-5)
                else:
                    assert tok == -1  # BOS or outside the sequence


def tied_lens(folder, W_dec, m, gemma=True):
    emb = E.unembedding(folder)[0].numpy()
    from safetensors.numpy import load_file

    w = load_file(str(folder / "model.safetensors"))["model.norm.weight"]
    logits = (W_dec * ((1 + w) if gemma else w)) @ emb.T
    return np.argsort(-logits, axis=1)[:, :m], np.argsort(logits, axis=1)[:, :m]


@pytest.mark.parametrize("model_type", ["gemma3_text", "llama"])
def test_logit_lens_applies_the_final_norm_scale(tmp_path, model_type):
    sae = random_sae(n=20, d=16, seed=1)
    folder = tiny_model_folder(tmp_path / "m", 16, vocab=50, model_type=model_type)
    got = E.logit_lens(sae.W_dec, folder, 5, device="cpu", chunk=6)
    top, bottom = tied_lens(folder, sae.W_dec, 5, gemma=model_type.startswith("gemma"))
    np.testing.assert_array_equal(got["logit_top"], top)
    np.testing.assert_array_equal(got["logit_bottom"], bottom)
    assert (np.diff(got["logit_top_val"], axis=1) <= 0).all()


def test_logit_lens_refuses_a_model_of_another_width(tmp_path):
    folder = tiny_model_folder(tmp_path / "m", 12)
    with pytest.raises(SAEMatchError, match="d_model 12"):
        E.logit_lens(random_sae(n=4, d=16).W_dec, folder, 3)


def test_lm_head_is_preferred_over_the_tied_embedding(tmp_path):
    from safetensors.torch import save_file

    folder = tiny_model_folder(tmp_path / "m", 8, vocab=30, model_type="llama")
    head = torch.randn(30, 8)
    tensors = {"model.embed_tokens.weight": torch.randn(30, 8), "lm_head.weight": head,
               "model.norm.weight": torch.ones(8)}
    save_file(tensors, str(folder / "model.safetensors"))
    w_u, scale = E.unembedding(folder)
    torch.testing.assert_close(w_u, head)
    torch.testing.assert_close(scale, torch.ones(8))


def test_neuronpedia_id_from_manifest_else_template(tmp_path):
    manifest = tmp_path / "layer_3.json"
    manifest.write_text(json.dumps({"path": "x",  # a saelens fetch manifest records it
                                    "meta": {"neuronpedia_id": "gemma-2-2b/3-custom-16k"}}))
    assert E.neuronpedia_id(manifest, "m/{layer}-res-{width}", 3, "16k") == \
        "gemma-2-2b/3-custom-16k"
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"path": "x"}))
    assert E.neuronpedia_id(plain, "gemma-2-2b/{layer}-gemmascope-res-{width}", 12, "16k") == \
        "gemma-2-2b/12-gemmascope-res-16k"
    assert E.neuronpedia_id(tmp_path / "params.npz", None, 1, "16k") == ""
    ev = E.Evidence(layer=12, threshold=np.ones(3), neuronpedia_id="gemma-2-2b/12-res-16k")
    assert ev.neuronpedia_url(7) == "https://www.neuronpedia.org/gemma-2-2b/12-res-16k/7"


def write_export(root, np_id, records, gz=True):
    """A Neuronpedia explanation export fixture: {root}/{model}/{source}/explanations/."""
    folder = E.explanations_dir(root, np_id)
    folder.mkdir(parents=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(folder / "batch-0.jsonl.gz", "wt") as fh:
            fh.write(lines)
    else:
        (folder / "batch-0.jsonl").write_text(lines)


def test_explanations_from_the_export_format(tmp_path):
    def rec(layer, index, text, model="gemma-2-2b"):
        return {"id": f"x{index}", "modelId": model, "layer": layer, "index": str(index),
                "description": text, "authorId": "a", "typeName": "oai_token-act-pair",
                "explanationModelName": "gpt-4o-mini", "embedding": None}

    write_export(tmp_path, "gemma-2-2b/3-gemmascope-res-16k", [
        rec("3-gemmascope-res-16k", 0, " references to cats"),
        rec("3-gemmascope-res-16k", 2, "code indentation"),
        rec("3-gemmascope-res-16k", 2, "a second, later explanation"),
        rec("4-gemmascope-res-16k", 1, "another source's feature"),
        rec("3-gemmascope-res-16k", 1, "another model's feature", model="gpt2-small"),
    ])
    got = E.read_explanations(tmp_path, "gemma-2-2b/3-gemmascope-res-16k", 4)
    assert got == ["references to cats", "", "code indentation", ""]
    assert E.read_explanations(tmp_path, "gemma-2-2b/9-gemmascope-res-16k", 2) == ["", ""]
    bad = E.explanations_dir(tmp_path, "gemma-2-2b/5-x")
    bad.mkdir(parents=True)
    (bad / "batch-0.jsonl").write_text('{"modelId": "gemma-2-2b", "layer": "5-x"}\nnot json\n')
    with pytest.raises(SAEMatchError, match="batch-0.jsonl"):
        E.read_explanations(tmp_path, "gemma-2-2b/5-x", 2)


def test_evidence_file_round_trip(tmp_path):
    sae = random_sae(n=24, d=16, seed=2)
    folder = tiny_model_folder(tmp_path / "m", 16, vocab=200)
    write_export(tmp_path / "np", "toy/0-res", [
        {"modelId": "toy", "layer": "0-res", "index": "1", "description": "ones"}], gz=False)
    ev = E.build_evidence(sae, 0, held=held_out(sae), model_dir=folder, np_id="toy/0-res",
                          explanations_root=tmp_path / "np", contexts=4, before=2, after=1,
                          logit_tokens=6, device="cpu")
    E.write_evidence(tmp_path / "ev.h5", ev)
    back = E.read_evidence(tmp_path / "ev.h5")
    for name in ("threshold", "freq", "ctx_tokens", "ctx_acts", "logit_top", "logit_bottom_val"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ev, name))
    assert back.explanation[1] == "ones" and back.neuronpedia_id == "toy/0-res"
    used = set(np.concatenate([ev.ctx_tokens.ravel(), ev.logit_top.ravel()]).tolist()) - {-1}
    assert used <= set(back.vocab) and back.vocab[int(ev.logit_top[0, 0])] == \
        f"w{ev.logit_top[0, 0]}"
    assert back.datasets == ["prose", "code"] and back.ctx_offset == 2
    # token texts HDF5 strings cannot hold (Gemma's vocabulary has a NUL token) survive exactly
    tok = int(ev.logit_top[0, 0])
    ev.vocab[tok] = "\x00"
    ev.explanation[0] = "a\x00b é"
    E.write_evidence(tmp_path / "ev2.h5", ev)
    back = E.read_evidence(tmp_path / "ev2.h5")
    assert back.vocab == ev.vocab and back.explanation == ev.explanation


def test_jaccard_equals_python_sets():
    rng = np.random.default_rng(0)
    a = rng.integers(-1, 6, (50, 4))
    b = rng.integers(-1, 6, (50, 4))
    perm = rng.permutation(50)
    got = S.jaccard(S.token_sets(a), S.token_sets(b), perm)
    for i in range(50):
        sa, sb = set(a[i]) - {-1}, set(b[perm[i]]) - {-1}
        if sa and sb:
            assert got[i] == pytest.approx(len(sa & sb) / len(sa | sb))
        else:
            assert np.isnan(got[i])


def test_activation_correlations_equal_numpy():
    a, b = random_sae(n=30, d=8, seed=0), random_sae(n=30, d=8, seed=1)
    rng = np.random.default_rng(0)
    x_a = rng.standard_normal((400, 8)).astype(np.float32)
    x_b = (x_a + 0.3 * rng.standard_normal((400, 8))).astype(np.float32)
    perm = rng.permutation(30)
    got = S.activation_correlations(a, b, x_a, x_b, [perm], batch=64)[0]
    fa, fb = a.encode(x_a), b.encode(x_b)[:, perm]
    for i in range(30):
        if fa[:, i].std() > 0 and fb[:, i].std() > 0:
            assert got[i] == pytest.approx(np.corrcoef(fa[:, i], fb[:, i])[0, 1], abs=1e-6)
        else:
            assert np.isnan(got[i])


def test_true_partners_score_above_the_null():
    """Layer b = layer a with features shuffled (plus noise): the true permutation agrees on
    every score, random pairs do not."""
    rng = np.random.default_rng(0)
    n = 60
    firing = rng.integers(0, 500, (n, 10))
    logit = rng.integers(0, 500, (n, 8))
    perm = rng.permutation(n)
    ev_a = E.Evidence(layer=0, threshold=np.ones(n), ctx_tokens=firing[:, :, None],
                      logit_top=logit)
    inv = np.argsort(perm)
    ev_b = E.Evidence(layer=1, threshold=np.ones(n), ctx_tokens=firing[inv][:, :, None],
                      logit_top=logit[inv])
    scores = S.pair_scores(ev_a, ev_b, {"true": perm, "random": rng.permutation(n)},
                           null_samples=4, seed=1)
    for name in ("context_tokens", "logit_tokens"):
        assert scores["true"][name][1] is scores["random"][name][1]  # one null for all
        assert np.nanmean(scores["random"][name][0]) < 0.1
        score, null = scores["true"][name]
        np.testing.assert_allclose(score, 1.0)
        row = S.summarize(score, null, np.ones(n, bool))
        assert row["frac_above_null95"] == 1.0 and row["null_mean"] < 0.1
        assert len(null) == 4 * n


# --- the judge ---------------------------------------------------------------------------

class ChatServer:
    """A chat-completions server on loopback: answers from a rule, can fail the first calls,
    and records every request it got."""

    def __init__(self, answer, fail_first: int = 0, fail_code: int = 503):
        self.requests: list[dict] = []
        self.fail_first, self.fail_code = fail_first, fail_code
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("Authorization")})
                if len(server.requests) <= server.fail_first:
                    self.send_error(server.fail_code)
                    return
                text = answer(body["messages"][-1]["content"])
                out = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def same_if_equal(prompt: str) -> str:
    a = prompt.split("Feature A: ")[1].split("\n")[0]
    b = prompt.split("Feature B: ")[1].split("\n")[0]
    return "SAME" if a == b else ("Maybe." if a[:3] == b[:3] else "DIFFERENT")


def chain_family(tmp_path):
    """Three layers of 6 features, perms, chains and evidence files with explanations."""
    perms = [np.array([1, 0, 3, 2, 5, 4]), np.array([2, 3, 0, 1, 5, 4])]
    matched = [np.array([1, 1, 1, 0, 0, 1], bool), np.array([1, 1, 1, 1, 1, 0], bool)]
    from saematch.persistence import chain_lengths

    lengths = chain_lengths(perms, matched)
    expl = [["cat", "dog", "tree", "sun", "sea", "sky"],
            ["dog", "cat", "sun", "trees", "sky", "sand"],
            ["sun", "trees", "cat", "dog", "sand", "sky"]]
    files = []
    for L, names in enumerate(expl):
        ev = E.Evidence(layer=L, threshold=np.ones(6), explanation=names,
                        neuronpedia_id=f"toy/{L}-res")
        files.append(tmp_path / f"ev_{L}.h5")
        E.write_evidence(files[-1], ev)
    return perms, lengths, files


def test_feature_paths_are_the_longest_maximal_chains(tmp_path):
    perms, lengths, _ = chain_family(tmp_path)
    paths = maximal_chains(lengths, perms, 10)
    assert paths[0][2] == 2 and all(p[2] <= paths[0][2] for p in paths)
    # no listed chain is the tail of another: its start is not reached by a matched step
    for s, i, _ in paths:
        if s > 0:
            prev = np.flatnonzero(perms[s - 1] == i)[0]
            assert lengths[s - 1][prev] == 0
    assert follow(perms, 0, 0, 2) == [0, 1, 3]


def test_judge_step_with_a_loopback_endpoint(tmp_path, monkeypatch):
    from saematch.explore.steps import judge_step

    perms, lengths, files = chain_family(tmp_path)
    with h5py.File(tmp_path / "chains.h5", "w") as h5:
        h5.create_dataset("length", data=lengths)
    asg = []
    for k, p in enumerate(perms):
        from saematch.assign import Assignment, write_assignment

        asg.append(tmp_path / f"asg_{k}.h5")
        write_assignment(asg[-1], Assignment(p, np.zeros(6), "dense"),
                         PairKey("6", "folded", k, k + 1).attrs())
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-never-written")
    with ChatServer(same_if_equal, fail_first=1) as srv:
        cfg = J.JudgeConfig(endpoint=srv.url, model="judge-1", api_key_env="TEST_JUDGE_KEY",
                            retries=2, backoff=0.01, timeout=5)
        judge_step(tmp_path / "chains.h5", asg[::-1], dict(enumerate(files)), "6", "folded",
                   cfg, 10, 1, tmp_path / "t.tsv", tmp_path / "j.tsv")
    assert srv.requests[0]["path"] == "/v1/chat/completions"
    assert all(r["auth"] == "Bearer sk-secret-never-written" for r in srv.requests)
    assert srv.requests[1]["body"]["model"] == "judge-1"
    import pandas as pd

    rows = pd.read_csv(tmp_path / "j.tsv", sep="\t")
    assert len(srv.requests) == len(rows) + 1  # one 503, retried
    for r in rows.itertuples():
        want = "SAME" if r.explanation_a == r.explanation_b else (
            "MAYBE" if r.explanation_a[:3] == r.explanation_b[:3] else "DIFFERENT")
        assert r.answer == want
        # each judged feature links to its Neuronpedia page (the SAE's id, from its evidence)
        assert r.neuronpedia_a == f"https://www.neuronpedia.org/toy/{r.layer_a}-res/{r.feature_a}"
        assert r.neuronpedia_b == f"https://www.neuronpedia.org/toy/{r.layer_b}-res/{r.feature_b}"
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(table.layer_a) == [0, 1]
    assert table.judged.sum() == len(rows) and table.same.sum() == (rows.answer == "SAME").sum()
    for f in tmp_path.iterdir():
        assert b"sk-secret-never-written" not in f.read_bytes()


def test_judge_endpoint_down_is_one_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = J.ChatClient(J.JudgeConfig(endpoint=f"http://127.0.0.1:{port}/v1", model="m",
                                        retries=2, backoff=0.01, timeout=2))
    with pytest.raises(SAEMatchError, match=r"down or unreachable: 3 tries failed"):
        client.complete(J.judge_messages("a", "b"))


def test_judge_bad_request_is_not_retried():
    with ChatServer(lambda p: "SAME", fail_first=5, fail_code=401) as srv:
        client = J.ChatClient(J.JudgeConfig(endpoint=srv.url, model="m", retries=3,
                                            backoff=0.01))
        with pytest.raises(SAEMatchError, match="HTTP 401"):
            client.complete(J.judge_messages("a", "b"))
    assert len(srv.requests) == 1


def test_answers_are_parsed_leniently():
    assert J.parse_answer("same") == "SAME"
    assert J.parse_answer("**DIFFERENT**: unrelated") == "DIFFERENT"
    assert J.parse_answer("Maybe, partly.") == "MAYBE"
    assert J.parse_answer("I cannot tell") == "OTHER"


def test_explanations_built_from_evidence_for_trained_saes():
    ev = E.Evidence(layer=0, threshold=np.ones(2), freq=np.array([0.1, 0.0]),
                    ctx_tokens=np.array([[[5, 7], [9, 7]], [[-1, -1], [-1, -1]]]),
                    ctx_offset=1, logit_top=np.array([[3, 4], [4, 3]]),
                    vocab={3: " the", 4: "def", 5: "a", 7: " cat", 9: "my"})
    text = J.evidence_explanation(ev, 0)
    assert "fires on tokens ' cat'" in text and "'a cat'" in text and "promotes ' the', 'def'" \
        in text
    assert J.evidence_explanation(ev, 1) == "promotes 'def', ' the'"


def test_explorer_without_token_evidence(tmp_path):
    """A synthetic source without a model: no scores, no contexts; the page still holds the
    structure (perms, costs, matched, chains) and the thresholds."""
    from saematch.assign import Assignment, write_assignment
    from saematch.explore.steps import explorer_step
    from saematch.metrics import write_pair_metrics

    perms, lengths, evidence = chain_family(tmp_path)
    asg, met = [], []
    for k, p in enumerate(perms):
        key = PairKey("6", "folded", k, k + 1).attrs()
        asg.append(tmp_path / f"asg_{k}.h5")
        write_assignment(asg[-1], Assignment(p, np.arange(6.0), "dense"), key)
        met.append(tmp_path / f"met_{k}.h5")
        write_pair_metrics(met[-1], {"mse": np.arange(6.0), "matched": lengths[k] > 0},
                           {"random_mse_mean": 10.0, "frac_matched": 0.5, **key})
    with h5py.File(tmp_path / "chains.h5", "w") as h5:
        h5.create_dataset("length", data=lengths)
    out = tmp_path / "explorer"
    explorer_step(out, width="6", source="synthetic", variant="folded",
                  evidence=dict(enumerate(evidence)), assignments=asg[::-1], metrics=met,
                  chains=tmp_path / "chains.h5")
    meta = json.loads((out / "data/meta.js").read_text().split("SAEM.meta = ", 1)[1][:-2])
    assert meta["scores"] == [] and meta["semantic_table"] == [] and not meta["has_contexts"]
    import base64

    assert np.array_equal(np.frombuffer(base64.b64decode(meta["pairs"][1]["perm"]), "<i4"),
                          perms[1])
    assert meta["flow"][0] == [0, 0, 2]  # the longest chain: 0 -> 1 -> 3 over both steps
    assert (out / "index.html").exists() and not list(tmp_path.glob(".explorer.tmp*"))
