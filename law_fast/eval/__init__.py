"""Evaluation: did the facts go, did everything else stay (docs/evaluation.md).

* :mod:`~law_fast.eval.lm`        the one scoring engine: log-likelihoods, generate_until, perplexity
* :mod:`~law_fast.eval.tasks`     the reasoning tasks, one row each (file, parser, scorer, harness config)
* :mod:`~law_fast.eval.harness`   the same tasks through lm-evaluation-harness
* :mod:`~law_fast.eval.knowledge` forgetting and retention of facts
* :mod:`~law_fast.eval.metrics`   pure-Python metrics (no model, no torch)
* :mod:`~law_fast.eval.report`    ``EvalConfig``, ``EvalReport``, ``evaluate``
* :mod:`~law_fast.eval.compare`   tables and plots of several reports
"""
