"""Washing (named so that ``law_fast.wash``, the function, stays a function): ``wash()`` and its stages, in the order a LaW wash runs them.

* :mod:`~law_fast.washing.api`         ``wash()`` and the METHODS registry
* :mod:`~law_fast.washing.result`      ``WashReport``, ``WashResult``, ``run_method`` (what every method shares)
* :mod:`~law_fast.washing.closed_form` the ``law`` and ``memit`` methods
* :mod:`~law_fast.washing.stats`       covariance statistics (§3)
* :mod:`~law_fast.washing.templates`   context templates (§2.1)
* :mod:`~law_fast.washing.retain`      knowledge to keep: retained keys in the covariance, the null-space restriction
* :mod:`~law_fast.washing.targets`     targets z* (§2.3)
* :mod:`~law_fast.washing.keys`        keys and their moments (§2.4-2.5)
* :mod:`~law_fast.washing.memit`       the MEMIT initialisation and λ rules (§4)
* :mod:`~law_fast.washing.law`         the LaW optimisation (§5)
* :mod:`~law_fast.washing.elimination` the known-fact check and successive elimination (§6)
"""
