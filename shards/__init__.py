"""Dataset -> WebDataset shard conversion (ARCHITECTURE.md, "Shard format").

Converters: `shards.voc.convert_voc`, `shards.coco.convert_coco`,
`shards.nuswide.convert_nuswide`, `shards.manifest.convert_manifest`,
`shards.folder.convert_folder`; the embedded benchmark: `shards.demo.build_demo`;
the CLI: `shards.cli`. Submodules are imported on demand to keep this light.
"""
from .errors import ConversionError, MissingInputError

__all__ = ["ConversionError", "MissingInputError"]
