# Stage 6: chains through composed permutations, and composed vs direct matching.


rule persistence:
    input:
        folded=expand("results/folded/width_{{width}}/layer_{layer}.npz", layer=LAYERS),
        consecutive=expand(
            "results/assign/{v}/width_{{width}}/{p[0]}-{p[1]}.h5", v=PERSIST["variant"], p=PAIRS
        ),
        metrics=expand(
            "results/metrics/{v}/width_{{width}}/{p[0]}-{p[1]}.h5", v=PERSIST["variant"], p=PAIRS
        ),
        direct=expand(
            "results/assign/{v}/width_{{width}}/{p[0]}-{p[1]}.h5",
            v=PERSIST["variant"],
            p=direct_pairs(),
        ),
    output:
        table=report("results/persistence/width_{width}/table.tsv", category="Persistence"),
        chains="results/persistence/width_{width}/chains.h5",
    params:
        layers=LAYERS,
        direct_pairs=direct_pairs(),
        max_distance=PERSIST["max_distance"],
    resources:
        mem_mb=lambda wc, attempt: len(LAYERS) * mem_mb_sae(wc, attempt),
    conda:
        "../envs/core.yaml"
    log:
        "logs/persistence/width_{width}.log",
    script:
        "../scripts/persistence.py"
