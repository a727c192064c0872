# Stage 7: figures, each from finished tables or per-pair files, wired into `snakemake --report`.


rule figures:
    input:
        unpack(folded_by_layer),
        metrics=lambda wc: pair_files("pair_metrics", "metrics", wc.width, VARIANTS, PAIRS),
        persistence=path_of("persistence", "table", width="{width}"),
    output:
        matched_mse=report("results/figures/width_{width}/matched_mse.png",
                           caption="../report/matched_mse.rst", category="Figures",
                           subcategory="width {width}"),
        mse_distributions=report("results/figures/width_{width}/mse_distributions.png",
                                 caption="../report/mse_distributions.rst", category="Figures",
                                 subcategory="width {width}"),
        persistence=report("results/figures/width_{width}/persistence.png",
                           caption="../report/persistence.rst", category="Figures",
                           subcategory="width {width}"),
        thresholds=report("results/figures/width_{width}/thresholds.png",
                          caption="../report/thresholds.rst", category="Figures",
                          subcategory="width {width}"),
    params:
        distribution_pairs=config["figures"]["distribution_pairs"],
    conda:
        "../envs/figures.yaml"
    log:
        "logs/figures/width_{width}.log",
    script:
        "../scripts/figures.py"


rule lm_figures:
    input:
        substitution=path_of("substitution_table", "table", width="{width}"),
        matching_score=path_of("matching_score_table", "table", width="{width}"),
    output:
        substitution=report("results/figures/width_{width}/substitution.png",
                            caption="../report/substitution.rst", category="Real model",
                            subcategory="width {width}"),
        matching_score=report("results/figures/width_{width}/matching_score.png",
                              caption="../report/matching_score.rst", category="Real model",
                              subcategory="width {width}"),
    conda:
        "../envs/figures.yaml"
    log:
        "logs/lm_figures/width_{width}.log",
    script:
        "../scripts/lm_figures.py"


rule quality_figure:
    input:
        table=rules.sae_quality.output.table,
    output:
        figure=report("results/figures/sae_quality.png", caption="../report/sae_quality.rst",
                      category="Real model"),
    conda:
        "../envs/figures.yaml"
    log:
        "logs/quality_figure.log",
    script:
        "../scripts/quality_figure.py"


localrules:
    figures,
    lm_figures,
    quality_figure,
