# Stage 2: validate each SAE and fold its thresholds into encoder and decoder.


rule fold:
    input:
        sae=lambda wc: sae_source(wc.layer, wc.width),
    output:
        folded="results/folded/width_{width}/layer_{layer}.npz",
    resources:
        mem_mb=mem_mb_sae,
    conda:
        "../envs/core.yaml"
    log:
        "logs/fold/width_{width}/layer_{layer}.log",
    script:
        "../scripts/fold.py"
