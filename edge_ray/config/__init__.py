"""Run configuration: frozen dataclasses, loaded from YAML, overridden by ``key=value``.

A config file mirrors the sections of ``schema.py`` (``data``, ``model``, ``loss``,
``train``, ``eval``); every key is optional and defaults to the values there. Overrides use
dotted keys (``loss.beta=0.01 train.num_workers=4``) and are parsed as YAML scalars
(``loading.py``). Unknown keys and bad values fail at load with the closest valid name
(``checks.py``), so a typo never silently trains the default. ``elastic.py``: worker counts
and per-rank batches.
"""
from edge_ray.config.checks import check_schedule, choice_error, closest, did_you_mean, validate
from edge_ray.config.elastic import batches_for, gap_scope, global_batches, is_elastic, split_batch, worker_range
from edge_ray.config.loading import (LOCATION_KEYS, apply_overrides, from_dict, load_config, parse_override,
                                     resolve_locations)
from edge_ray.config.schema import (IMAGENET_MEAN, IMAGENET_STD, Config, ConfigError, DataConfig, EvalConfig,
                                    LossConfig, ModelConfig, TrainConfig)

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "TrainConfig",
           "IMAGENET_MEAN", "IMAGENET_STD", "LOCATION_KEYS", "apply_overrides", "batches_for", "check_schedule",
           "choice_error", "closest", "did_you_mean", "from_dict", "gap_scope", "global_batches", "is_elastic", "load_config",
           "parse_override", "resolve_locations", "split_batch", "validate", "worker_range"]
