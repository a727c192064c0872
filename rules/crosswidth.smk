# Cross-width matching (config cross_width): what a wider SAE did to each feature of a narrower
# one, at the same layer and from layer t to t+1, in the space of persistence.variant. Per pair:
# the exact rectangular LAP (narrow -> distinct wide features; the dense or certified solver, as
# for layer pairs, reusing their rules), then the parent map (every wide feature -> its nearest
# narrow feature, one GEMM pass) with the links file (both maps scored, children lists,
# null-calibrated decision), one table over all pairs and one figure per width pair.


use rule cost_matrix as cross_cost_matrix with:
    output:
        cost="results/crosswidth/costs/{variant}/{narrow}-{wide}/{a}-{b}.h5",
    log:
        "logs/cross_cost_matrix/{variant}/{narrow}-{wide}/{a}-{b}.log",


use rule candidate_graph as cross_candidate_graph with:
    output:
        graph="results/crosswidth/candidates/{variant}/{narrow}-{wide}/{a}-{b}.h5",
    log:
        "logs/cross_candidate_graph/{variant}/{narrow}-{wide}/{a}-{b}.log",


use rule assign as cross_assign with:
    output:
        assignment="results/crosswidth/assign/{variant}/{narrow}-{wide}/{a}-{b}.h5",
    log:
        "logs/cross_assign/{variant}/{narrow}-{wide}/{a}-{b}.log",


rule cross_links:
    """The parent map (every wide feature of layer b to its nearest narrow feature of layer a,
    one GEMM pass), both maps scored in the folded reference space, the parent links that count
    (top-1 null) and each narrow feature's children: the file a feature view reads."""
    input:
        unpack(cross_truth_input),
        assignment=path_of("cross_assign", "assignment", variant="{variant}", narrow="{narrow}",
                           wide="{wide}", a="{a}", b="{b}"),
        sae_a=lambda wc: side_input(wc, "a"),
        sae_b=lambda wc: side_input(wc, "b"),
    output:
        parents="results/crosswidth/parents/{variant}/{narrow}-{wide}/{a}-{b}.h5",
        links="results/crosswidth/links/{variant}/{narrow}-{wide}/{a}-{b}.h5",
    params:
        spec=lambda wc: variant_spec(wc.variant),
        terms=config["metrics"]["terms"],
        alpha=config["metrics"]["alpha"],
        null_samples=config["metrics"]["null_samples"],
        seed=config["metrics"]["seed"],
        block=COMPUTE["block"],
        device=COMPUTE["device"],
    threads: COMPUTE["threads"]
    resources:
        mem_mb=mem_mb_sae,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/cross_links/{variant}/{narrow}-{wide}/{a}-{b}.log",
    script:
        "../scripts/cross_links.py"


use rule metrics_table as cross_table with:
    input:
        metrics=[f for n, w in CROSS for f in cross_files("cross_links", "links", n, w)],
    output:
        table=report("results/crosswidth/summary.tsv", caption="../report/crosswidth_table.rst",
                     category="Cross-width"),
    log:
        "logs/cross_table.log",


rule split_depth:
    """Whether the wide SAE splits the same narrow features at consecutive layers."""
    input:
        links=lambda wc: cross_files("cross_links", "links", wc.narrow, wc.wide),
        narrow_assignments=lambda wc: pair_files("assign", "assignment", wc.narrow,
                                                 [PERSIST["variant"]], PAIRS),
        narrow_metrics=lambda wc: pair_files("pair_metrics", "metrics", wc.narrow,
                                             [PERSIST["variant"]], PAIRS),
        wide_assignments=lambda wc: pair_files("assign", "assignment", wc.wide,
                                               [PERSIST["variant"]], PAIRS),
    output:
        table=report("results/crosswidth/depth/{narrow}-{wide}.tsv",
                     caption="../report/crosswidth_depth.rst", category="Cross-width"),
    params:
        variant=PERSIST["variant"],
    conda:
        "../envs/core.yaml"
    log:
        "logs/split_depth/{narrow}-{wide}.log",
    script:
        "../scripts/split_depth.py"


rule cross_figure:
    input:
        links=lambda wc: cross_files("cross_links", "links", wc.narrow, wc.wide),
        depth=path_of("split_depth", "table", narrow="{narrow}", wide="{wide}"),
    output:
        figure=report("results/figures/crosswidth/{narrow}-{wide}.png",
                      caption="../report/crosswidth.rst", category="Cross-width"),
    conda:
        "../envs/figures.yaml"
    log:
        "logs/cross_figure/{narrow}-{wide}.log",
    script:
        "../scripts/cross_figure.py"


localrules:
    cross_figure,
