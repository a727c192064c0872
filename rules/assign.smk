# Stage 4: exact linear assignment per layer pair and variant (identity needs no costs).


rule assign:
    input:
        unpack(assign_input),
    output:
        assignment="results/assign/{variant}/width_{width}/{a}-{b}.h5",
    params:
        variant=lambda wc: variant(wc.variant),
        layers=lambda wc: (int(wc.a), int(wc.b)),
    resources:
        mem_mb=mem_mb_assign,
        runtime=runtime_min,
    conda:
        "../envs/torch.yaml"
    log:
        "logs/assign/{variant}/width_{width}/{a}-{b}.log",
    script:
        "../scripts/assign.py"
