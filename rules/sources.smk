# Stage 1: SAE parameter files. Local sources need no rule: their files are inputs as they are.


rule plant_sae:
    """A planted synthetic SAE of one layer and width, with its ground truth (origin of each
    feature in the layer before; for a width planted by splitting a narrower one, also each
    feature's parent)."""
    output:
        params="results/synthetic/layer_{layer}/width_{width}/{folder}/params.npz",
        truth="results/synthetic/layer_{layer}/width_{width}/{folder}/truth.npz",
    params:
        spec=lambda wc: planted_spec(wc.width),
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


rule fetch_saelens_sae:
    """Resolve one SAE of a SAELens release through SAELens's registry (repo, path, format,
    Neuronpedia id), download it into the Hub cache (token from HF_TOKEN only) and write a
    manifest naming the cached files. Local, like fetch_sae."""
    output:
        manifest="results/saelens/width_{width}/layer_{layer}.json",
    params:
        release=lambda wc: config["source"]["saelens"]["release"],
        sae_id=lambda wc: saelens_sae_id(wc.width, wc.layer),
        revision=lambda wc: config["source"]["saelens"]["revision"],
        registry=lambda wc: config["source"]["saelens"]["registry"],
    retries: 3
    conda:
        "../envs/hub.yaml"
    log:
        "logs/fetch_saelens_sae/width_{width}/layer_{layer}.log",
    script:
        "../scripts/fetch_saelens_sae.py"


localrules:
    fetch_sae,
    fetch_saelens_sae,
