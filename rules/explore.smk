# See what was matched (saematch.explore): evidence per feature (width x layer), semantic
# agreement of matched pairs against random pairs (width x variant x pair), the optional LLM
# judge along feature paths (width), and one static explorer page per width.

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
    if SEMANTIC:
        inputs["semantic"] = [semantic_file(PERSIST["variant"], wc.width, a, b) for a, b in PAIRS]
        inputs["semantic_table"] = semantic_table_files()["table"]
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


rule feature_evidence:
    input:
        unpack(evidence_input),
    output:
        evidence=evidence_file("{width}", "{layer}"),
    params:
        layer=lambda wc: int(wc.layer),
        datasets=LM_DATASETS if SOURCE == "trained" else [],
        neuronpedia_template=EXPLORE["neuronpedia"]["template"],
        evidence={
            "contexts": EXPLORE["contexts"],
            "before": EXPLORE["context_before"],
            "after": EXPLORE["context_after"],
            "logit_tokens": EXPLORE["logit_tokens"],
        },
        device=EXPLORE["device"],
    resources:
        mem_mb=lambda wc, attempt: mem_mb_sae(wc, attempt) + attempt * 4096 * bool(EXPLORE_MODEL),
        gpu=1 if EXPLORE_MODEL else 0,
    conda:
        "../envs/lm.yaml"
    log:
        "logs/explore/evidence/width_{width}/layer_{layer}.log",
    script:
        "../scripts/explore_evidence.py"


rule semantic_pair:
    input:
        unpack(semantic_input),
    output:
        scores=semantic_file("{variant}", "{width}", "{a}", "{b}"),
    params:
        layers=lambda wc: (int(wc.a), int(wc.b)),
        null_samples=EXPLORE["semantic"]["null_samples"],
        seed=EXPLORE["semantic"]["seed"],
    resources:
        mem_mb=mem_mb_sae,
    conda:
        "../envs/core.yaml"
    log:
        "logs/explore/semantic/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/explore_semantic.py"


rule semantic_table:
    input:
        scores=[
            semantic_file(k["variant"], k["width"], k["layer_a"], k["layer_b"])
            for k in semantic_keys()
        ],
    output:
        table=report(semantic_table_files()["table"], category="Semantic agreement"),
        figure=report(semantic_table_files()["figure"], category="Semantic agreement"),
    params:
        rows=semantic_keys(),
    conda:
        "../envs/figures.yaml"
    log:
        "logs/explore/semantic_table.log",
    script:
        "../scripts/explore_semantic_table.py"


rule judge:
    """The paper's LLM judge (off by default): needs the endpoint, so it runs where Snakemake
    runs (local rule); the API key is read from the environment variable named in config."""
    input:
        chains="results/persistence/width_{width}/chains.h5",
        assignments=lambda wc: persistence_pairs(wc, "assign"),
        evidence=lambda wc: [evidence_file(wc.width, layer) for layer in LAYERS],
    output:
        **judge_files("{width}"),
    params:
        layers=LAYERS,
        judge={k: v for k, v in JUDGE.items() if k != "enabled"},
    conda:
        "../envs/core.yaml"
    log:
        "logs/explore/judge/width_{width}.log",
    script:
        "../scripts/explore_judge.py"


rule explorer:
    input:
        unpack(explorer_input),
    output:
        explorer=report(
            directory(explorer_dir("{width}")),
            htmlindex="index.html",
            category="Explorer",
            subcategory="width {width}",
        ),
    params:
        source=SOURCE,
        variant=PERSIST["variant"],
        layers=LAYERS,
        page={"flow_chains": EXPLORE["flow_chains"], "chunk": EXPLORE["chunk"]},
    conda:
        "../envs/explore.yaml"
    log:
        "logs/explore/explorer/width_{width}.log",
    script:
        "../scripts/explorer.py"


localrules:
    judge,
