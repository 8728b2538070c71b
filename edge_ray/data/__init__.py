"""Shard reading pipeline (pure core: never imports ray). See `reader.py` for the stages."""
from .index import ShardIndex, load_index, read_labels
from .reader import EvalCache, EvalLoader, TrainLoader, eval_loader, multi_hot, steps_per_epoch, train_loader
from .records import Record
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = ["ShardIndex", "load_index", "read_labels", "TrainLoader", "EvalLoader", "EvalCache", "train_loader",
           "eval_loader", "multi_hot", "steps_per_epoch", "Record", "IMAGENET_MEAN",
           "IMAGENET_STD", "train_transform", "eval_transform"]
