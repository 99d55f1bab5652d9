"""Hugging Face plumbing: everything the washing stages and the evaluation need from a model.

* :mod:`~law_fast.hf.adapters` where LaW's pieces live per architecture family; model identity
* :mod:`~law_fast.hf.hooks`    capture keys, stop a forward early, skip blocks, save-and-restore flags
* :mod:`~law_fast.hf.compat`   every transformers version quirk, the pad id, KV caches, logit precision
* :mod:`~law_fast.hf.tokens`   filling templates, locating the subject's last token
* :mod:`~law_fast.hf.generate` batched greedy / sampled generation, the decided greedy loop
* :mod:`~law_fast.hf.loading`  local directories, GGUF files, the embedded default model
"""
