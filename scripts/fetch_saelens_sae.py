"""Rule fetch_saelens_sae: see saematch.sources.fetch_saelens_sae (token from HF_TOKEN only)."""
from saematch.sources import fetch_saelens_sae
from saematch.workflow import run

run(snakemake, lambda s: fetch_saelens_sae(  # noqa: F821
    s.params.release, s.params.sae_id, s.params.revision, s.output.manifest,
    registry=s.params.registry))
