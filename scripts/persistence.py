"""Rule persistence: see saematch.steps.persistence_step."""
from saematch.steps import persistence_step
from saematch.workflow import run


def main(s):
    index = {layer: i for i, layer in enumerate(s.params.layers)}
    pairs = list(zip(s.params.layers[:-1], s.params.layers[1:])) + s.params.direct_pairs
    files = list(s.input.consecutive) + list(s.input.direct)
    direct = {(index[a], index[b]): f for (a, b), f in zip(pairs, files, strict=True)}
    persistence_step(s.input.folded, s.input.consecutive, s.input.metrics, direct,
                     s.params.max_distance, s.output.table, s.output.chains)


run(snakemake, main)  # noqa: F821
