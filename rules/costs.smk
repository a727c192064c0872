# Stage 3: costs of each layer pair and matching variant (blockwise GEMM, GPU if present):
# the dense matrix for the dense solver, the candidate graph for the certified one.


rule cost_matrix:
    input:
        sae_a=lambda wc: side_input(wc, "a"),
        sae_b=lambda wc: side_input(wc, "b"),
    output:
        cost="results/costs/{variant}/width_{width}/{a}-{b}.h5",
    params:
        spec=lambda wc: variant_spec(wc.variant),
        block=COMPUTE["block"],
        device=COMPUTE["device"],
    threads: COMPUTE["threads"]
    resources:
        mem_mb=mem_mb_pair,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/cost_matrix/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/cost_matrix.py"


rule candidate_graph:
    input:
        sae_a=lambda wc: side_input(wc, "a"),
        sae_b=lambda wc: side_input(wc, "b"),
    output:
        graph="results/candidates/{variant}/width_{width}/{a}-{b}.h5",
    params:
        spec=lambda wc: variant_spec(wc.variant),
        k=config["assign"]["k"],
        block=COMPUTE["block"],
        device=COMPUTE["device"],
    threads: COMPUTE["threads"]
    resources:
        mem_mb=mem_mb_pair,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/candidate_graph/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/candidate_graph.py"
