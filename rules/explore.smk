# See what was matched (saematch.explore): evidence per feature (width x layer), semantic
# agreement of matched pairs against random pairs (width x variant x pair), the optional LLM
# judge along feature paths (width), and one static explorer page per width.


rule feature_evidence:
    input:
        unpack(evidence_input),
    output:
        evidence="results/explore/evidence/width_{width}/layer_{layer}.h5",
    params:
        layer=lambda wc: int(wc.layer),
        neuronpedia_template=EXPLORE["neuronpedia"]["template"],
        contexts=EXPLORE["contexts"],
        before=EXPLORE["context_before"],
        after=EXPLORE["context_after"],
        logit_tokens=EXPLORE["logit_tokens"],
        device=EXPLORE["device"],
    resources:
        mem_mb=lambda wc, input, attempt: mem_mb_sae(wc, input, attempt)
        + attempt * 4096 * SEMANTIC,
        gpu=1 if SEMANTIC else 0,
    conda:
        "../envs/lm.yaml"
    log:
        "logs/explore/evidence/width_{width}/layer_{layer}.log",
    script:
        "../scripts/explore_evidence.py"


rule semantic_pair:
    """Every variant's matches of one layer pair in one job (one set of random pairs, one read
    of the held-out activations); one file per variant."""
    input:
        unpack(semantic_input),
    output:
        **{f"scores_{v}": f"results/explore/semantic/{v}/width_{{width}}/{{a}}-{{b}}.h5"
           for v in VARIANTS},
    params:
        null_samples=EXPLORE["semantic"]["null_samples"],
        seed=EXPLORE["semantic"]["seed"],
    resources:
        mem_mb=mem_mb_sae,
    conda:
        "../envs/core.yaml"
    log:
        "logs/explore/semantic/width_{width}/{a}-{b}.log",
    script:
        "../scripts/explore_semantic.py"


rule semantic_table:
    input:
        scores=lambda wc: [semantic_file(v, w, a, b) for w in WIDTHS for v in VARIANTS
                           for a, b in PAIRS],
    output:
        table=report("results/explore/semantic/summary.tsv", caption="../report/semantic.rst",
                     category="Semantic agreement"),
        figure=report("results/figures/semantic_agreement.png",
                      caption="../report/semantic_figure.rst", category="Semantic agreement"),
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
        unpack(evidence_by_layer),
        chains=path_of("persistence", "chains", width="{width}"),
        assignments=lambda wc: pair_files("assign", "assignment", wc.width,
                                          [PERSIST["variant"]], PAIRS),
    output:
        table="results/explore/judge/width_{width}/table.tsv",
        judgements="results/explore/judge/width_{width}/judgements.tsv",
    params:
        variant=PERSIST["variant"],
        endpoint=JUDGE["endpoint"],
        model=JUDGE["model"],
        api_key_env=JUDGE["api_key_env"],
        paths=JUDGE["paths"],
        min_length=JUDGE["min_length"],
        retries=JUDGE["retries"],
        backoff=JUDGE["backoff"],
        timeout=JUDGE["timeout"],
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
        explorer=directory("results/explorer/width_{width}"),
    params:
        source=SOURCE,
        variant=PERSIST["variant"],
        flow_chains=EXPLORE["flow_chains"],
        chunk=EXPLORE["chunk"],
    conda:
        "../envs/explore.yaml"
    log:
        "logs/explore/explorer/width_{width}.log",
    script:
        "../scripts/explorer.py"


localrules:
    judge,
