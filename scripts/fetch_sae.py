"""Rule fetch_sae: see saematch.sources.fetch_hub_sae (the token comes from HF_TOKEN only)."""
from saematch.sources import fetch_hub_sae
from saematch.workflow import run

run(snakemake, lambda s: fetch_hub_sae(  # noqa: F821
    s.params.repo_id, s.params.revision, s.params.layer, s.wildcards.width, s.params.folder,
    s.output.manifest))
