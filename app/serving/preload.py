"""Imported once by the model pool's fork server: what every worker process needs, loaded before it forks.

The workers are forked from that server, so the libraries' memory is shared with it instead of copied
into each worker; ``gc.freeze`` keeps a worker's garbage collector from writing to (and so copying)
every inherited object: about 30 MiB of a worker's own instead of 190 (BENCHMARKS.md, "Serving").
"""

import gc
import importlib

for module in ("peft.utils", "safetensors.torch", "transformers.modeling_utils", "app.serving.model_process"):
    importlib.import_module(module)

gc.collect()
gc.freeze()
