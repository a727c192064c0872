# The real-model path (source.kind: trained): export the LM once, cut disjoint train/eval
# corpora, collect residual-stream activations, train one JumpReLU SAE per layer and width
# (written as Gemma Scope params.npz, so the matching rules treat it like a downloaded SAE),
# then evaluate hidden-state substitution and the Matching Score on held-out text.


rule export_model:
    output:
        model=directory("results/lm/model"),
    params:
        model=canonical(LM.get("model")),
    log:
        "logs/lm/export_model.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_export_model.py"


rule lm_corpus:
    input:
        model=rules.export_model.output.model,
    output:
        train="results/lm/corpus/{dataset}_train.h5",
        eval="results/lm/corpus/{dataset}_eval.h5",
    params:
        source=lambda wc: canonical(LM["datasets"][wc.dataset]),
        seq_len=LM.get("seq_len"),
        eval_fraction=LM.get("eval_fraction"),
    log:
        "logs/lm/corpus/{dataset}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_corpus.py"


rule lm_activations:
    input:
        model=rules.export_model.output.model,
        corpus=lambda wc: path_of("lm_corpus", wc.split, dataset=wc.dataset),
    output:
        activations="results/lm/activations/{dataset}_{split}.h5",
    params:
        model=canonical(LM.get("model")),
        batch_size=LM.get("activations_batch_size"),
        # Evaluation (held-out FVU, substitution, Matching Score) reads exact float32 states.
        dtype=lambda wc: LM["train_activations_dtype"] if wc.split == "train" else "float32",
    resources:
        gpu=1,
    log:
        "logs/lm/activations/{dataset}_{split}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_activations.py"


rule train_sae:
    input:
        train=activations("train"),
        eval=activations("eval"),
    output:
        params="results/trained/layer_{layer}/width_{width}/{folder}/params.npz",
        card="results/trained/layer_{layer}/width_{width}/{folder}/card.json",
    params:
        layer=lambda wc: int(wc.layer),
        n_features=lambda wc: width_features(wc.width),
        hyper=canonical(LM.get("train")),
        seed=LM.get("seed"),
    resources:
        gpu=1,
    log:
        "logs/lm/train_sae/width_{width}/layer_{layer}/{folder}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_train_sae.py"


rule sae_quality:
    input:
        cards=lambda wc: [
            path_of("train_sae", "card", layer=layer, width=w, folder=sae_folder(w, layer))
            for w in WIDTHS
            for layer in LAYERS
        ],
    output:
        table=report("results/lm/sae_quality.tsv", caption="../report/sae_quality_table.rst",
                     category="Real model"),
    params:
        widths=canonical({w: width_features(w) for w in WIDTHS}),
    log:
        "logs/lm/sae_quality.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/lm_sae_quality.py"


rule clean_loss:
    """The unmodified model's loss on the held-out sequences that delta loss is measured on."""
    input:
        model=rules.export_model.output.model,
        corpus=lambda wc: path_of("lm_corpus", "eval", dataset=wc.dataset),
    output:
        clean="results/lm/clean_loss/{dataset}.h5",
    params:
        model=canonical(LM.get("model")),
        n_sequences=SUBSTITUTION.get("delta_loss_sequences"),
        loss_stride=SUBSTITUTION.get("loss_stride"),
        batch_size=SUBSTITUTION.get("batch_size"),
    resources:
        gpu=1,
    log:
        "logs/lm/clean_loss/{dataset}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_clean_loss.py"


rule substitution:
    """Hidden-state substitution of one adjacent pair and width: EV of every substitute, delta
    loss of the chosen ones, bootstrap replicates over held-out sequences."""
    input:
        unpack(delta_loss_input),
        corpora=[path_of("lm_corpus", "eval", dataset=d) for d in LM_DATASETS],
        activations=activations("eval"),
        sae_a=lambda wc: sae_source(wc.a, wc.width),
        sae_b=lambda wc: sae_source(wc.b, wc.width),
        assignments=lambda wc: pair_files("assign", "assignment", wc.width, VARIANTS,
                                          [(wc.a, wc.b)]),
    output:
        pair="results/lm/substitution/width_{width}/{a}-{b}.h5",
    params:
        model=canonical(LM.get("model")),
        delta_loss_substitutes=lambda wc: delta_loss_substitutes(wc.width),
        batch_size=SUBSTITUTION.get("batch_size"),
        n_boot=BOOTSTRAP.get("samples"),
        seed=BOOTSTRAP.get("seed"),
    resources:
        gpu=1,
    log:
        "logs/lm/substitution/width_{width}/{a}-{b}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_substitution.py"


rule substitution_table:
    input:
        pairs=lambda wc: [path_of("substitution", "pair", width=wc.width, a=a, b=b)
                          for a, b in ADJACENT_PAIRS],
    output:
        table=report("results/lm/substitution/width_{width}.tsv",
                     caption="../report/substitution_table.rst", category="Real model",
                     subcategory="width {width}"),
        comparisons=report("results/lm/substitution/width_{width}_comparisons.tsv",
                           caption="../report/substitution_comparisons.rst",
                           category="Real model", subcategory="width {width}"),
    log:
        "logs/lm/substitution_table/width_{width}.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/lm_substitution_table.py"


rule matching_score:
    """Matching Score of every variant of one pair and width on the held-out tokens."""
    input:
        activations=activations("eval"),
        sae_a=lambda wc: sae_source(wc.a, wc.width),
        sae_b=lambda wc: sae_source(wc.b, wc.width),
        assignments=lambda wc: pair_files("assign", "assignment", wc.width, VARIANTS,
                                          [(wc.a, wc.b)]),
    output:
        pair="results/lm/matching_score/width_{width}/{a}-{b}.h5",
    params:
        n_null=LM.get("matching_score_null"),
        n_boot=BOOTSTRAP.get("samples"),
        seed=BOOTSTRAP.get("seed"),
    log:
        "logs/lm/matching_score/width_{width}/{a}-{b}.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/lm_matching_score.py"


rule matching_score_table:
    input:
        pairs=lambda wc: [path_of("matching_score", "pair", width=wc.width, a=a, b=b)
                          for a, b in PAIRS],
    output:
        table=report("results/lm/matching_score/width_{width}.tsv",
                     caption="../report/matching_score_table.rst", category="Real model",
                     subcategory="width {width}"),
    log:
        "logs/lm/matching_score_table/width_{width}.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/lm_matching_score_table.py"


rule lm_digest:
    """Markdown digest of one width's evaluation (tables with intervals, verdict counts)."""
    input:
        substitution=path_of("substitution_table", "table", width="{width}"),
        comparisons=path_of("substitution_table", "comparisons", width="{width}"),
        matching_score=path_of("matching_score_table", "table", width="{width}"),
    output:
        digest=report("results/lm/digest_width_{width}.md", caption="../report/digest.rst",
                      category="Real model", subcategory="width {width}"),
    log:
        "logs/lm/digest/width_{width}.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/lm_digest.py"
