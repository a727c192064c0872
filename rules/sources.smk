# Stage 1: SAE parameter files. Local sources need no rule: their files are inputs as they are.


rule plant_sae:
    """A planted synthetic SAE of one layer and width, with its ground truth (origin of each
    feature in the layer before)."""
    output:
        params="results/synthetic/layer_{layer}/width_{width}/{folder}/params.npz",
        truth="results/synthetic/layer_{layer}/width_{width}/{folder}/truth.npz",
    params:
        spec=canonical(config["source"].get("synthetic", {})),
        n_features=lambda wc: width_features(wc.width),
        layer=lambda wc: int(wc.layer),
    conda:
        "../envs/core.yaml"
    log:
        "logs/plant_sae/width_{width}/layer_{layer}/{folder}.log",
    script:
        "../scripts/plant_sae.py"


rule fetch_sae:
    """Download one Gemma Scope params.npz into the Hub cache (token from HF_TOKEN only) and
    write a manifest naming the cached file. Local: compute nodes often have no internet."""
    output:
        manifest="results/fetched/width_{width}/layer_{layer}.json",
    params:
        repo_id=config["source"].get("hub", {}).get("repo_id"),
        revision=config["source"].get("hub", {}).get("revision"),
        layer=lambda wc: int(wc.layer),
        folder=lambda wc: sae_folder(wc.width, wc.layer),
    retries: 3
    conda:
        "../envs/hub.yaml"
    log:
        "logs/fetch_sae/width_{width}/layer_{layer}.log",
    script:
        "../scripts/fetch_sae.py"


localrules:
    fetch_sae,
