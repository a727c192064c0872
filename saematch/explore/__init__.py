"""See what was matched: feature evidence, semantic agreement of matched pairs, an optional LLM
judge along feature paths, and a static explorer page per width.

- :mod:`.evidence`: per width x layer, each feature's top-activating held-out contexts, firing
  frequency and mean activation (from the activations the workflow already collected), its
  logit lens (decoder row through the model's unembedding) and its Neuronpedia id/explanation.
- :mod:`.semantic`: per width x variant x pair, offline agreement scores of every matched pair
  next to the same scores of random pairs (the null).
- :mod:`.judge`: the paper's LLM judge (SAME / MAYBE / DIFFERENT) through an OpenAI-compatible
  chat endpoint; off by default.
- :mod:`.page`: the explorer, a static page per width that opens from ``file://``.
"""
