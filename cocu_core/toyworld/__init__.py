"""The embedded toy world: procedural image-text pairs with a real semantic gap and ground-truth masks."""

from cocu_core.toyworld.concepts import CLASS_NAMES, CONCEPTS, STUFF, THINGS
from cocu_core.toyworld.generate import (format_gap, generate_split, generate_world, read_pairs, semantic_gap,
                                         toy_ground_truth)
from cocu_core.toyworld.serve import LoopbackServer, serve_directory, write_url_list

__all__ = [
    "CLASS_NAMES", "CONCEPTS", "STUFF", "THINGS", "generate_split", "generate_world", "read_pairs",
    "semantic_gap", "format_gap", "toy_ground_truth", "LoopbackServer", "serve_directory", "write_url_list",
]
