# Stage 3: cost matrix of each layer pair and matching variant (blockwise GEMM, GPU if present).


rule cost_matrix:
    input:
        sae_a=lambda wc: vectors_input(wc, wc.a),
        sae_b=lambda wc: vectors_input(wc, wc.b),
    output:
        cost="results/costs/{variant}/width_{width}/{a}-{b}.h5",
    params:
        variant=lambda wc: variant(wc.variant),
        layers=lambda wc: (int(wc.a), int(wc.b)),
        block=config["costs"]["block"],
        device=config["costs"]["device"],
    resources:
        mem_mb=mem_mb_costs,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/cost_matrix/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/cost_matrix.py"
