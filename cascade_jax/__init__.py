"""cascade-jax: CascadeBERT (cascade exiting of complete BERT models with a difficulty-aware regulariser) in JAX."""

import logging as _logging

__version__ = "0.1.0"


class _NoTorchNotice(_logging.Filter):
    """Drops transformers' import-time notice "PyTorch was not found. Models won't be available ...": this library
    uses transformers only for tokenizers, which need no PyTorch, so the notice only misleads."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


# transformers logs the notice through its root logger ("transformers") while it is first imported; a filter on
# that logger, installed before the import, drops this one record and nothing else (other warnings still show,
# and nothing is changed in the environment of this process or its children).
_logging.getLogger("transformers").addFilter(_NoTorchNotice())

# XLA:CPU frees and re-allocates its large per-call buffers on every call; glibc's defaults make each call fault its
# memory in again (15% of a training step's CPU time). CASCADE_JAX_MALLOC=tuned keeps them (at the cost of a higher
# peak memory); see cascade_jax/host_memory.py. Without it, nothing is changed.
from cascade_jax import host_memory as _host_memory  # noqa: E402

_host_memory.configure()
