"""Rule judge: see saematch.explore.steps.judge_step (the API key comes from the environment)."""
from saematch.explore.steps import judge_step
from saematch.workflow import run

run(snakemake, lambda s: judge_step(  # noqa: F821
    s.input.chains, s.input.assignments, s.input.evidence, s.params.layers, s.params.judge,
    s.output.table, s.output.judgements))
