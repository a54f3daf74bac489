"""Configuration, the shared vocabulary of every stage: config.json and an execution's overrides become one
checked SourceConfig, every problem reported at once.

settings.py (the settings and their bounds), tables.py (table options), connections.py (what each driver is
handed), secrets.py (secret references), sources.py (a source, loading, overrides, the run's fingerprint).
Imports only lib's top modules (errors, identifiers, retry), never a stage.
"""

from lib.config.settings import SETTING_NAMES, Settings
from lib.config.sources import OVERRIDE_KEYS, SourceConfig, load_config, parse_config
from lib.config.tables import LOAD_MODES, TABLE_OVERRIDE_KEYS, TableSpec, pg_identifier_problem
from lib.errors import ConfigError

__all__ = ["LOAD_MODES", "OVERRIDE_KEYS", "SETTING_NAMES", "TABLE_OVERRIDE_KEYS", "ConfigError", "Settings",
           "SourceConfig", "TableSpec", "load_config", "parse_config", "pg_identifier_problem"]
