"""Workflow definitions: the attrs model, loading from YAML/JSON, validation."""

from kflow.model.definition import (
    ActivityDefinition,
    ActivitySettings,
    BudgetSettings,
    CacheSettings,
    Dependency,
    OutputDefinition,
    RetryPolicy,
    SignalWait,
    WorkflowDefinition,
    WorkflowSettings,
)
from kflow.model.durations import parse_duration
from kflow.model.graph import DefinitionGraph
from kflow.model.loader import definition_from_dict, load_definition
from kflow.model.normalize import content_hash, normalized_dict
from kflow.model.validate import validate_definition

__all__ = [
    "ActivityDefinition",
    "ActivitySettings",
    "BudgetSettings",
    "CacheSettings",
    "DefinitionGraph",
    "Dependency",
    "OutputDefinition",
    "RetryPolicy",
    "SignalWait",
    "WorkflowDefinition",
    "WorkflowSettings",
    "content_hash",
    "definition_from_dict",
    "load_definition",
    "normalized_dict",
    "parse_duration",
    "validate_definition",
]
