"""The ground floor: what every other package may use, importing none of them.

The config tree (:mod:`core.config`), the user-facing error (:mod:`core.errors`), file helpers
(:mod:`core.files`), how a stage is prompted (:mod:`core.prompting`), the readers of the packaged sources
(:mod:`core.sources`) and the stage registry (:mod:`core.registry`, with the built-in stages and their settings
in :mod:`core.stages`, registered here so that every reader of the registry sees them).
"""

from core import stages as _stages  # noqa: F401 - registers the built-in stages
