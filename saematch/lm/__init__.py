"""Real-model side of SAE Match: corpus, model loading, activations, SAE training, evaluation.

Modules: ``text`` (deterministic train/eval corpora), ``model`` (load any HF causal LM, GGUF
included), ``activations`` (residual stream after each decoder layer into HDF5), ``train``
(JumpReLU SAE training), ``substitution`` (hidden-state substitution, PAPER.md eq. 5) and
``matching_score`` (paired-activation probability of matched features).
"""
