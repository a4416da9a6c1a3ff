"""kflow: a durable workflow engine for AI work, on Trio.

The public names live here; everything in a module whose name starts with an
underscore is private. A test keeps ``__all__`` sorted and complete.
"""

from kflow._version import __version__
from kflow.errors import (
    ActivityCancelled,
    ActivityError,
    ApiError,
    ConflictError,
    DefinitionError,
    KflowError,
    NotFoundError,
    TemplateError,
    ValidationFailed,
)

__all__ = [
    "ActivityCancelled",
    "ActivityError",
    "ApiError",
    "ConflictError",
    "DefinitionError",
    "KflowError",
    "NotFoundError",
    "TemplateError",
    "ValidationFailed",
    "__version__",
]
