# Stage 5: per-pair metrics in the folded reference space, then one table over everything.


rule pair_metrics:
    input:
        unpack(truth_input),
        assignment="results/assign/{variant}/width_{width}/{a}-{b}.h5",
        folded_a="results/folded/width_{width}/layer_{a}.npz",
        folded_b="results/folded/width_{width}/layer_{b}.npz",
    output:
        metrics="results/metrics/{variant}/width_{width}/{a}-{b}.h5",
    params:
        metrics=config["metrics"],
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
        metrics=[
            f"results/metrics/{k['variant']}/width_{k['width']}/{k['layer_a']}-{k['layer_b']}.h5"
            for k in summary_keys()
        ],
    output:
        table=report("results/metrics/summary.tsv", category="Metrics"),
    params:
        rows=summary_keys(),
    conda:
        "../envs/core.yaml"
    log:
        "logs/metrics_table.log",
    script:
        "../scripts/metrics_table.py"
