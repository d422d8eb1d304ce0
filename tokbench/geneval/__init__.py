"""GenEval-style compositional scoring: the official rules (`rules`), GenEval's files (`layout`), scoring and
outputs (`scoring`), and the transformers detector + open_clip colour classifier (`detector`, imported on use).
Command line: `tokbench geneval` (`cli`)."""

from .layout import load_detections, load_metadata, official_metadata, summarize, write_results
from .rules import COLORS, GENEVAL_CLASSES, Instance, RuleOptions, decide
from .scoring import LABEL_GIVEN, LABEL_HF, GenevalRun, score_detections, score_images, write_outputs

__all__ = ["COLORS", "GENEVAL_CLASSES", "LABEL_GIVEN", "LABEL_HF", "GenevalRun", "Instance", "RuleOptions", "decide",
           "load_detections", "load_metadata", "official_metadata", "score_detections", "score_images", "summarize",
           "write_outputs", "write_results"]  # fmt: skip
