# Stage 7: figures per width, wired into `snakemake --report`.


rule figures:
    input:
        metrics=lambda wc: [f for v in VARIANTS for f in metrics_files(wc.width, v)],
        folded=expand("results/folded/width_{{width}}/layer_{layer}.npz", layer=LAYERS),
        persistence="results/persistence/width_{width}/table.tsv",
    output:
        **{
            name: report(path, category="Figures", subcategory="width {width}")
            for name, path in figure_files("{width}").items()
        },
    params:
        variants=VARIANTS,
        layers=LAYERS,
        distribution_pairs=config["figures"]["distribution_pairs"],
    conda:
        "../envs/figures.yaml"
    log:
        "logs/figures/width_{width}.log",
    script:
        "../scripts/figures.py"


localrules:
    figures,
