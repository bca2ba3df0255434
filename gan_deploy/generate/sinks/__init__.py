"""Where `generate` puts images: one module per sink behind `base.Sink`; the registry is here.
Adding a sink (a format container, a store) = one module in this folder + one line in SINKS.
"""
from __future__ import annotations

import importlib

from gan_deploy.core.errors import GanDeployError
from gan_deploy.generate.sinks.base import Bitset, Encoded, Layout, Result, Sink, SinkWorker, Task

# name -> "module:class"; the first is the default
SINKS: dict[str, str] = {
    "folder": "gan_deploy.generate.sinks.folder:FolderSink",  # one file per image: png | jpg | npy
    "tar": "gan_deploy.generate.sinks.tar:TarSink",  # WebDataset tar shards
    "array": "gan_deploy.generate.sinks.array:ArraySink",  # one memory-mappable .npy [N, H, W, C] uint8
}


def sink_class(name: str) -> type[Sink]:
    if name not in SINKS:
        raise GanDeployError("unknown sink", repr(name), expected=f"one of {', '.join(SINKS)}")
    module, cls = SINKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["SINKS", "Bitset", "Encoded", "Layout", "Result", "Sink", "SinkWorker", "Task", "sink_class"]
