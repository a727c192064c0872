# Stage 4: exact linear assignment per layer pair and variant: dense LAPJV (PyPI lap), or the
# certified sparse solver (candidates + dual optimality certificate); identity needs no costs.


rule assign:
    input:
        unpack(assign_input),
    output:
        assignment="results/assign/{variant}/width_{width}/{a}-{b}.h5",
    params:
        spec=lambda wc: variant_spec(wc.variant),
        solver_options=canonical({k: config["assign"][k] for k in ("k", "time_limit")}),
        block=COMPUTE["block"],
        device=COMPUTE["device"],
    threads: COMPUTE["threads"]
    resources:
        mem_mb=mem_mb_pair,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/assign/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/assign.py"
