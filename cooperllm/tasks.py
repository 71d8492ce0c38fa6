"""Task specification: how a text-classification example becomes a loss for a causal LM.

``causal-lm-cls`` scores one label word per class at the answer position of a prompt; ``seq-cls`` puts a new
linear head on the last token's hidden state. Both read the last position, which left padding keeps in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

CAUSAL_LM_CLS = "causal-lm-cls"
SEQ_CLS = "seq-cls"
TASK_MODES = (CAUSAL_LM_CLS, SEQ_CLS)

SST2_TEMPLATE = "Review: {text}\nSentiment:"
SST2_LABEL_WORDS = (" negative", " positive")
SST2_LABEL_NAMES = ("negative", "positive")


@dataclass(frozen=True)
class TaskSpec:
    mode: str = CAUSAL_LM_CLS
    template: str = SST2_TEMPLATE
    label_words: tuple[str, ...] = SST2_LABEL_WORDS
    label_names: tuple[str, ...] = field(default=SST2_LABEL_NAMES)

    def __post_init__(self) -> None:
        if self.mode not in TASK_MODES:
            raise ValueError(f"unknown task mode {self.mode!r}; choose one of {', '.join(TASK_MODES)}")
        if self.template.count("{text}") != 1:
            raise ValueError(f"prompt template must contain '{{text}}' exactly once: {self.template!r}")
        if len(self.label_names) < 2:
            raise ValueError(f"need at least two classes, got {list(self.label_names)}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"class names must be distinct: {list(self.label_names)}")
        if self.mode == SEQ_CLS and not self.label_words:
            return  # a classification head has no use for label words
        if len(self.label_words) != len(self.label_names):
            raise ValueError(
                f"need one label word per class: {len(self.label_words)} words for classes {list(self.label_names)}"
            )
        if len(set(self.label_words)) != len(self.label_words):
            raise ValueError(f"label words must be distinct: {self.label_words}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def split_template(self) -> tuple[str, str]:
        """(prefix, suffix) around the text; the text is truncated, the template never is."""
        prefix, suffix = self.template.split("{text}")
        return prefix, suffix

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_words"] = list(self.label_words)
        d["label_names"] = list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, data: Mapping) -> TaskSpec:
        return cls(
            mode=str(data["mode"]),
            template=str(data["template"]),
            label_words=tuple(data["label_words"]),
            label_names=tuple(data["label_names"]),
        )
