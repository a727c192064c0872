"""Rule semantic_pair: see saematch.explore.steps.semantic_step."""
from saematch.explore.steps import semantic_step
from saematch.workflow import run


def main(s):
    inputs = dict(s.input.items())
    semantic_step(s.input.evidence_a, s.input.evidence_b, s.input.assignments, s.input.metrics,
                  {k.removeprefix("scores_"): v for k, v in s.output.items()},
                  null_samples=s.params.null_samples, seed=s.params.seed,
                  sae_a=inputs.get("sae_a"), sae_b=inputs.get("sae_b"),
                  activations=inputs.get("activations", ()))


run(snakemake, main)  # noqa: F821
