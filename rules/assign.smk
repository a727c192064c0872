# Stage 4: exact linear assignment per layer pair and variant: scipy's dense LAP, or the
# certified sparse solver (candidates + dual optimality certificate); identity needs no costs.


rule assign:
    input:
        unpack(assign_input),
    output:
        assignment="results/assign/{variant}/width_{width}/{a}-{b}.h5",
    params:
        variant=lambda wc: variant(wc.variant),
        layers=lambda wc: (int(wc.a), int(wc.b)),
        certified={k: config["assign"][k] for k in ("k", "time_limit")},
        block=config["costs"]["block"],
        device=config["costs"]["device"],
    resources:
        mem_mb=mem_mb_assign,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/assign/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/assign.py"
