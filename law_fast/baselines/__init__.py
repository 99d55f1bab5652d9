"""The fine-tuning baselines the LaW paper compares against: ``ft``, ``me-ft``, ``ft-ul``, ``seul``,
``woh`` (law-reference §8, docs/baselines.md).

* :mod:`law_fast.baselines.training` — examples, losses, the training loop, the perplexity guard, LoRA;
* :mod:`law_fast.baselines.methods`  — the runners behind ``law_fast.wash(method=...)``.
"""

from .._moved import forwarding_getattr

# law_fast 0.1's flat module ``law_fast.baselines``: its names still resolve here, with a DeprecationWarning
__getattr__ = forwarding_getattr(__name__, ("law_fast.baselines.training", "law_fast.baselines.methods"), warn=True)
