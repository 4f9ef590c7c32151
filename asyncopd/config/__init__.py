"""Config schema and loader (pydantic + YAML), shared by the simulator and the trainer."""

from asyncopd.config.loader import ConfigError, dump_config, load_config
from asyncopd.config.schema import OPDConfig

__all__ = ["ConfigError", "OPDConfig", "dump_config", "load_config"]
