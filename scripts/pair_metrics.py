"""Rule pair_metrics: see saematch.steps.metrics_step."""
from saematch.steps import metrics_step
from saematch.workflow import run

run(snakemake, lambda s: metrics_step(  # noqa: F821
    s.input.assignment, s.input.folded_a, s.input.folded_b, s.output.metrics,
    truth=s.input.get("truth"), terms=s.params.terms, alpha=s.params.alpha,
    null_samples=s.params.null_samples, seed=s.params.seed))
