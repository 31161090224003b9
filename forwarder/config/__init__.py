"""The configuration: one YAML file read strictly into frozen dataclasses.

``values`` parses durations, sizes, AE titles and the like; ``engine`` is the generic
strict YAML-to-dataclass builder; ``schema`` is this project's dataclasses; ``loader``
reads a file into them, with ``crosscheck`` for rules across values; ``envcheck`` checks
what the configuration needs from the machine; ``yamlsrc`` reads YAML with the line of
every key, bounded in size, depth and aliases.
"""

from forwarder.config.loader import load, parse
from forwarder.config.schema import (
    Condition,
    Config,
    Destination,
    Retention,
    Route,
    Watch,
)
from forwarder.config.values import parse_duration
from forwarder.errors import ConfigIssue

__all__ = ["Condition", "Config", "ConfigIssue", "Destination", "Retention", "Route", "Watch",
           "load", "parse", "parse_duration"]
