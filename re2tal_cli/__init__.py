"""re2tal: reversible video backbones for end-to-end temporal action localization."""

__version__ = "0.1.0"
