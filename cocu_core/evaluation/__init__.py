"""Evaluation: how well curated concepts close the semantic gap, and (later) zero-shot segmentation."""
