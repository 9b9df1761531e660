"""Getting image-text pairs: img2dataset downloads into webdataset shards."""

from cocu_core.data.download import download_stage, read_url_list, shards_brace

__all__ = ["download_stage", "read_url_list", "shards_brace"]
