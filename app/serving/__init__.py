"""Serving the arena's checkpoints: the model pool and the processes that hold the models.

- :mod:`app.serving.pool`: :class:`~app.serving.pool.ModelPool`, which the arena asks for answers;
- :mod:`app.serving.sampling`: the decoding settings and the seeded per-row sampling;
- :mod:`app.serving.batching`: a model process's one batch for every request to it (continuous batching);
- :mod:`app.serving.model_process`: one full model in a process of its own, and its request loop;
- :mod:`app.serving.preload`: what the fork server imports before it forks the model processes;
- :mod:`app.serving.multi_lora`: several LoRA adapters on one model, per batch row;
- :mod:`app.serving.shared_weights`: weights mapped from one cache file, a model held as another plus a difference;
- :mod:`app.serving.memory`: the bytes the model processes hold.
"""
