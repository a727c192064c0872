"""Rule feature_evidence: see saematch.explore.steps.evidence_step."""
from saematch.explore.steps import evidence_step
from saematch.workflow import run


def main(s):
    inputs = dict(s.input.items())
    evidence_step(s.input.sae, s.params.layer, s.wildcards.width, s.output.evidence,
                  activations=inputs.get("activations", ()), corpora=inputs.get("corpora", ()),
                  model_dir=inputs.get("model"),
                  neuronpedia_template=s.params.neuronpedia_template,
                  explanations=inputs.get("explanations"), contexts=s.params.contexts,
                  before=s.params.before, after=s.params.after,
                  logit_tokens=s.params.logit_tokens, device=s.params.device)


run(snakemake, main)  # noqa: F821
