# Explorer stage (rules/explore.smk): config, every output path (one function per kind of
# result), input and target functions.

EXPLORE = config["explore"]
# The model folder whose unembedding (logit lens) and tokenizer the evidence uses: the
# exported LM for trained SAEs, else the one the user names (e.g. gemma-2-2b next to Gemma Scope).
EXPLORE_MODEL = "results/lm/model" if SOURCE == "trained" else EXPLORE["model"]
# Semantic scores need token evidence: held-out text (trained) or a logit lens (a model).
SEMANTIC = EXPLORE_MODEL is not None
JUDGE = EXPLORE["judge"]


# Every output path of this stage, one function per kind of result.
def evidence_file(width, layer):
    return f"results/explore/evidence/width_{width}/layer_{layer}.h5"


def semantic_file(variant, width, a, b):
    return f"results/explore/semantic/{variant}/width_{width}/{a}-{b}.h5"


def semantic_table_files():
    return {"table": "results/explore/semantic/summary.tsv",
            "figure": "results/figures/semantic_agreement.png"}


def judge_files(width):
    return {"table": f"results/explore/judge/width_{width}/table.tsv",
            "judgements": f"results/explore/judge/width_{width}/judgements.tsv"}


def explorer_dir(width):
    return f"results/explorer/width_{width}"


def held_out_activations():
    """Held-out activations of every dataset (trained source only; others have no text)."""
    if SOURCE != "trained":
        return []
    return [f"results/lm/activations/{d}_eval.h5" for d in LM_DATASETS]


def evidence_input(wc):
    inputs = {"sae": sae_source(wc.layer, wc.width)}
    if SOURCE == "trained":
        inputs["activations"] = held_out_activations()
        inputs["corpora"] = [f"results/lm/corpus/{d}_eval.h5" for d in LM_DATASETS]
    if EXPLORE_MODEL:
        inputs["model"] = EXPLORE_MODEL
    if EXPLORE["neuronpedia"]["explanations"]:
        inputs["explanations"] = EXPLORE["neuronpedia"]["explanations"]
    return inputs


def semantic_input(wc):
    pair = f"{wc.variant}/width_{wc.width}/{wc.a}-{wc.b}.h5"
    inputs = {"evidence_a": evidence_file(wc.width, wc.a),
              "evidence_b": evidence_file(wc.width, wc.b),
              "assignment": f"results/assign/{pair}", "metrics": f"results/metrics/{pair}"}
    if SOURCE == "trained":  # activation correlation on the held-out text
        inputs.update(sae_a=sae_source(wc.a, wc.width), sae_b=sae_source(wc.b, wc.width),
                      activations=held_out_activations())
    return inputs


def semantic_keys():
    return summary_keys() if SEMANTIC else []


def persistence_pairs(wc, kind):
    return [f"results/{kind}/{PERSIST['variant']}/width_{wc.width}/{a}-{b}.h5" for a, b in PAIRS]


def explorer_input(wc):
    inputs = {"evidence": [evidence_file(wc.width, layer) for layer in LAYERS],
              "assignments": persistence_pairs(wc, "assign"),
              "metrics": persistence_pairs(wc, "metrics"),
              "chains": f"results/persistence/width_{wc.width}/chains.h5"}
    if SEMANTIC:  # every variant's scores, variant-major (the page's per-pair chart)
        inputs["semantic"] = [semantic_file(v, wc.width, a, b) for v in VARIANTS for a, b in PAIRS]
    if JUDGE["enabled"]:
        inputs["judge_table"] = judge_files(wc.width)["table"]
    return inputs


def explore_targets():
    targets = [explorer_dir(w) for w in WIDTHS]
    targets += [evidence_file(w, layer) for w in WIDTHS for layer in LAYERS]
    if SEMANTIC:
        targets += list(semantic_table_files().values())
    if JUDGE["enabled"]:
        targets += [f for w in WIDTHS for f in judge_files(w).values()]
    return targets
