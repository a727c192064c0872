# Stage 6: chains through composed permutations, and composed vs direct matching.


rule persistence:
    input:
        unpack(folded_by_layer),
        consecutive=lambda wc: pair_files("assign", "assignment", wc.width,
                                          [PERSIST["variant"]], PAIRS),
        metrics=lambda wc: pair_files("pair_metrics", "metrics", wc.width,
                                      [PERSIST["variant"]], PAIRS),
        direct=lambda wc: pair_files("assign", "assignment", wc.width, [PERSIST["variant"]],
                                     direct_pairs()),
    output:
        table=report("results/persistence/width_{width}/table.tsv",
                     caption="../report/persistence_table.rst", category="Persistence",
                     subcategory="width {width}"),
        chains="results/persistence/width_{width}/chains.h5",
    params:
        variant=PERSIST["variant"],
        max_distance=PERSIST["max_distance"],
    resources:
        mem_mb=mem_mb_sae,
    conda:
        "../envs/core.yaml"
    log:
        "logs/persistence/width_{width}.log",
    script:
        "../scripts/persistence.py"
