"""Shard reading pipeline (pure core: never imports ray). See `loaders.py` for the stages."""
from .caches import EvalCache
from .index import ShardIndex, load_index, read_labels
from .loaders import Augment, DeviceInput, EvalLoader, TrainLoader, eval_loader, train_loader
from .plan import steps_per_epoch
from .records import Record
from .streams import multi_hot
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = ["ShardIndex", "load_index", "read_labels", "TrainLoader", "EvalLoader", "EvalCache", "train_loader",
           "eval_loader", "Augment", "DeviceInput", "multi_hot", "steps_per_epoch", "Record", "IMAGENET_MEAN",
           "IMAGENET_STD", "train_transform", "eval_transform"]
