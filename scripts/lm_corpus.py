"""Rule lm_corpus: see saematch.lm.steps.corpus_step."""
from saematch.lm.steps import corpus_step
from saematch.workflow import run

run(snakemake, lambda s: corpus_step(  # noqa: F821
    s.input.model, s.wildcards.dataset, s.params.source, s.params.seq_len,
    s.params.source["train_tokens"], s.params.source["eval_tokens"], s.params.eval_fraction,
    s.output.train, s.output.eval))
