"""Registered experiments (one module per chapter: the only chapter-specific code), the
results store and sweeps. Importing this package registers every chapter's experiments."""
from gnelib.runs.registry import (Config, Experiment, command_line, config_key, get, make_config,
                                  names, param, register)
from gnelib.runs import first_look, bdi, pws, bn  # noqa: F401  (registration)
from gnelib.runs.store import Store, StoreWarning

__all__ = ["Config", "Experiment", "Store", "StoreWarning", "command_line", "config_key", "get",
           "make_config", "names", "param", "register"]
