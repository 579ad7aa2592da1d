"""The YAML configuration: schema, loading and validation."""

from stabaudit.config.loader import AuditConfig, load_config

__all__ = ["AuditConfig", "load_config"]
