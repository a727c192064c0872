# Stage 5: per-pair metrics in the folded reference space, then one table over everything.


rule pair_metrics:
    input:
        unpack(truth_input),
        assignment=path_of("assign", "assignment", variant="{variant}", width="{width}",
                           a="{a}", b="{b}"),
        folded_a=path_of("fold", "folded", width="{width}", layer="{a}"),
        folded_b=path_of("fold", "folded", width="{width}", layer="{b}"),
    output:
        metrics="results/metrics/{variant}/width_{width}/{a}-{b}.h5",
    params:
        terms=config["metrics"]["terms"],
        alpha=config["metrics"]["alpha"],
        null_samples=config["metrics"]["null_samples"],
        seed=config["metrics"]["seed"],
    resources:
        mem_mb=mem_mb_sae,
    conda:
        "../envs/core.yaml"
    log:
        "logs/pair_metrics/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/pair_metrics.py"


rule metrics_table:
    input:
        metrics=[f for w in WIDTHS for f in pair_files("pair_metrics", "metrics", w, VARIANTS,
                                                        PAIRS)],
    output:
        table=report("results/metrics/summary.tsv", caption="../report/summary.rst",
                     category="Metrics"),
    conda:
        "../envs/core.yaml"
    log:
        "logs/metrics_table.log",
    script:
        "../scripts/metrics_table.py"
