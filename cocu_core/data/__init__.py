"""Getting image-text pairs: pair lists (`pairs`) and img2dataset's webdataset shards (`shards`)."""

from cocu_core.data.pairs import read_pair_list, read_url_list
from cocu_core.data.shards import read_download_manifest, shards_brace

__all__ = ["read_pair_list", "read_url_list", "read_download_manifest", "shards_brace"]
