"""The paper's semantic check: an LLM judges explanations of matched features along feature
paths SAME / MAYBE / DIFFERENT (PAPER.md), through any OpenAI-compatible chat endpoint.

Feature paths are the persistence chains (``chains.h5``): the longest maximal chains of matched
steps, each followed step by step; every step (feature i of layer a, its partner of layer b)
is one judgement. Explanations are Neuronpedia's where the evidence has them; for SAEs trained
here (no Neuronpedia page) they are *built from the evidence* by :func:`evidence_explanation`
(top firing tokens, one context, top promoted tokens), which is what the judge then compares.

The API key is read from the environment variable named in the config, only when a request is
sent; it never reaches params, logs or results.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SAEMatchError
from .chains import follow
from .evidence import Evidence

log = logging.getLogger("saematch")

ANSWERS = ("SAME", "MAYBE", "DIFFERENT")
SYSTEM = ("You compare two short descriptions of features found by sparse autoencoders in "
          "neighbouring layers of a language model. Answer with exactly one word: SAME if they "
          "describe the same concept, MAYBE if they overlap or one is a broader version of the "
          "other, DIFFERENT otherwise.")


@dataclass(frozen=True)
class JudgeConfig:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    timeout: float = 60.0


class ChatClient:
    """Minimal chat-completions client (stdlib only) with retries and exponential backoff."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.url = cfg.endpoint.rstrip("/") + "/chat/completions"

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def complete(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.cfg.model, "messages": messages, "temperature": 0,
                           "max_tokens": 8}).encode()
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(self._request(body), timeout=self.cfg.timeout) as r:
                    return json.loads(r.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if exc.code != 429 and exc.code < 500:  # the request itself is wrong: no retry
                    raise SAEMatchError(f"judge endpoint {self.url}: {last}") from exc
            except (urllib.error.URLError, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise SAEMatchError(f"judge endpoint {self.url}: answer is not a "
                                    f"chat completion ({exc})") from exc
            log.warning("judge endpoint %s: try %d failed (%s)", self.url, attempt + 1, last)
        raise SAEMatchError(f"judge endpoint {self.url} is down or unreachable: "
                            f"{self.cfg.retries + 1} tries failed, last: {last}")


def parse_answer(text: str) -> str:
    """SAME / MAYBE / DIFFERENT (the first one named), or OTHER."""
    m = re.search(r"\b(SAME|MAYBE|DIFFERENT)\b", text.upper())
    return m.group(1) if m else "OTHER"


def judge_messages(expl_a: str, expl_b: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Feature A: {expl_a}\nFeature B: {expl_b}\n"
                                        "SAME, MAYBE or DIFFERENT?"}]


def evidence_explanation(ev: Evidence, i: int, n_tokens: int = 5) -> str:
    """A feature's explanation: Neuronpedia's where present, else built from its evidence."""
    if ev.explanation is not None and ev.explanation[i]:
        return ev.explanation[i]
    parts = []
    if ev.has_contexts and ev.freq[i] > 0:
        firing = [t for t in ev.firing_tokens()[i] if t >= 0]
        common = [repr(ev.vocab.get(int(t), "?")) for t, _ in Counter(firing).most_common(n_tokens)]
        parts.append("fires on tokens " + ", ".join(common))
        snippet = "".join(ev.vocab.get(int(t), "") for t in ev.ctx_tokens[i, 0] if t >= 0)
        parts.append(f"e.g. in {snippet!r}")
    if ev.has_logit_lens:
        promoted = [repr(ev.vocab.get(int(t), "?")) for t in ev.logit_top[i, :n_tokens]]
        parts.append("promotes " + ", ".join(promoted))
    return "; ".join(parts)


def judge_paths(paths: Sequence[tuple[int, int, int]], layers: Sequence[int],
                perms: Sequence[np.ndarray], evidence: Sequence[Evidence],
                client: ChatClient) -> list[dict]:
    """One row per judged step: path, layer_a, feature_a, layer_b, feature_b, answer, the two
    explanations, raw, and each feature's Neuronpedia page ('' where the SAE has no id)."""
    from tqdm import tqdm

    steps = [(p, s + k, i) for p, (s, i0, length) in enumerate(paths)
             for k, i in enumerate(follow(perms, s, i0, length)[:-1])]
    rows = []
    for p, t, i in tqdm(steps, desc="judge", unit="pair"):
        j = int(perms[t][i])
        a, b = evidence_explanation(evidence[t], i), evidence_explanation(evidence[t + 1], j)
        if not a or not b:
            answer, raw = "NO_EXPLANATION", ""
        else:
            raw = client.complete(judge_messages(a, b))
            answer = parse_answer(raw)
        rows.append({"path": p, "layer_a": layers[t], "feature_a": i, "layer_b": layers[t + 1],
                     "feature_b": j, "answer": answer, "explanation_a": a, "explanation_b": b,
                     "raw": raw.strip(), "neuronpedia_a": evidence[t].neuronpedia_url(i),
                     "neuronpedia_b": evidence[t + 1].neuronpedia_url(j)})
    return rows


def tabulate(rows: Sequence[dict], layers: Sequence[int]) -> list[dict]:
    """SAME / MAYBE / DIFFERENT / OTHER / NO_EXPLANATION counts per layer pair."""
    out = []
    for a, b in zip(layers[:-1], layers[1:]):
        c = Counter(r["answer"] for r in rows if r["layer_a"] == a)
        judged = sum(c[k] for k in (*ANSWERS, "OTHER"))
        out.append({"layer_a": a, "layer_b": b, "judged": judged,
                    **{k.lower(): c[k] for k in (*ANSWERS, "OTHER", "NO_EXPLANATION")},
                    "frac_same": c["SAME"] / judged if judged else np.nan})
    return out
