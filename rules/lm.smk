# The real-model path (source.kind: trained): export the LM once, cut disjoint train/eval
# corpora, collect residual-stream activations, train one JumpReLU SAE per layer and width
# (written as Gemma Scope params.npz, so the matching rules treat it like a downloaded SAE),
# then evaluate hidden-state substitution and the Matching Score on held-out text.


rule export_model:
    output:
        model=directory("results/lm/model"),
    params:
        model=LM.get("model"),
    log:
        "logs/lm/export_model.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_export_model.py"


rule lm_corpus:
    input:
        model="results/lm/model",
    output:
        train="results/lm/corpus/{dataset}_train.h5",
        eval="results/lm/corpus/{dataset}_eval.h5",
    params:
        source=lambda wc: LM["datasets"][wc.dataset],
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
        model="results/lm/model",
        corpus="results/lm/corpus/{dataset}_{split}.h5",
    output:
        activations="results/lm/activations/{dataset}_{split}.h5",
    params:
        model=LM.get("model"),
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
        train=expand("results/lm/activations/{dataset}_train.h5", dataset=LM_DATASETS),
        eval=expand("results/lm/activations/{dataset}_eval.h5", dataset=LM_DATASETS),
    output:
        params="results/trained/layer_{layer}/width_{width}/{folder}/params.npz",
        card="results/trained/layer_{layer}/width_{width}/{folder}/card.json",
    params:
        layer=lambda wc: int(wc.layer),
        n_features=lambda wc: width_features(wc.width),
        hyper=LM.get("train"),
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
        cards=[trained_card(k["layer"], k["width"]) for k in quality_keys()],
    output:
        table=report("results/lm/sae_quality.tsv", category="Real model"),
        figure=report("results/figures/sae_quality.png", category="Real model"),
    params:
        rows=quality_keys(),
    log:
        "logs/lm/sae_quality.log",
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/lm_sae_quality.py"


rule substitution:
    input:
        model="results/lm/model",
        corpora=expand("results/lm/corpus/{dataset}_eval.h5", dataset=LM_DATASETS),
        saes=lambda wc: [sae_source(layer, wc.width) for layer in LAYERS],
        assignments=lambda wc: consecutive_assignments(wc.width),
    output:
        table=report("results/lm/substitution/width_{width}.tsv", category="Real model"),
        figure=report("results/figures/width_{width}/substitution.png", category="Real model"),
    params:
        model=LM.get("model"),
        layers=LAYERS,
        datasets=LM_DATASETS,
        variants=VARIANTS,
        batch_size=LM.get("substitution_batch_size"),
        loss_stride=LM.get("loss_stride"),
    resources:
        gpu=1,
    log:
        "logs/lm/substitution/width_{width}.log",
    conda:
        "../envs/lm.yaml"
    script:
        "../scripts/lm_substitution.py"


rule matching_score:
    input:
        activations=expand("results/lm/activations/{dataset}_eval.h5", dataset=LM_DATASETS),
        saes=lambda wc: [sae_source(layer, wc.width) for layer in LAYERS],
        assignments=lambda wc: consecutive_assignments(wc.width),
    output:
        table=report("results/lm/matching_score/width_{width}.tsv", category="Real model"),
        figure=report("results/figures/width_{width}/matching_score.png", category="Real model"),
    params:
        layers=LAYERS,
        variants=VARIANTS,
        n_null=LM.get("matching_score_null"),
    log:
        "logs/lm/matching_score/width_{width}.log",
    conda:
        "../envs/figures.yaml"
    script:
        "../scripts/lm_matching_score.py"
