"""Rule judge: see saematch.explore.steps.judge_step (the API key comes from the environment)."""
from saematch.explore.judge import JudgeConfig
from saematch.explore.steps import judge_step
from saematch.workflow import layer_inputs, run

run(snakemake, lambda s: judge_step(  # noqa: F821
    s.input.chains, s.input.assignments, layer_inputs(s.input), s.wildcards.width,
    s.params.variant,
    JudgeConfig(endpoint=s.params.endpoint, model=s.params.model,
                api_key_env=s.params.api_key_env, retries=s.params.retries,
                backoff=s.params.backoff, timeout=s.params.timeout),
    s.params.paths, s.params.min_length, s.output.table, s.output.judgements))
