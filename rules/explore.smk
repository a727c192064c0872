# See what was matched (saematch.explore): evidence per feature (width x layer), semantic
# agreement of matched pairs against random pairs (width x variant x pair), the optional LLM
# judge along feature paths (width), and one static explorer page per width.


include: "explore_common.smk"


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
        # Linked from report/workflow.rst, not embedded: Snakemake embeds a folder only in a
        # zip report, and it would break `snakemake --report report.html`.
        explorer=directory(explorer_dir("{width}")),
    params:
        source=SOURCE,
        variant=PERSIST["variant"],
        variants=VARIANTS,
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
