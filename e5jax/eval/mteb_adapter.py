"""Let the `mteb` package evaluate an e5jax model.

    import mteb
    from e5jax.model.encoder import Encoder
    from e5jax.eval.mteb_adapter import MtebEncoder

    model = MtebEncoder(Encoder.from_pretrained("path/to/e5-model"))
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]), cache=None)

mteb (tested with 2.26.24; not a dependency of e5jax: `pip install mteb==2.26.24`)
calls `encode(DataLoader of batches, task_metadata=, hf_split=, hf_subset=,
prompt_type=)`. E5's convention picks the prefix: "passage: " for documents,
"query: " for queries *and* for tasks without a query/document side (STS,
classification, clustering, pair classification — E5 treats them as
symmetric queries).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # mteb is optional: the prompt rule below works without it
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
except ImportError:  # pragma: no cover - exercised only without mteb
    AbsEncoder = object  # type: ignore[assignment,misc]
    ModelMeta = ScoringFunction = None  # type: ignore[assignment]

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "


def e5_prefix(prompt_type: Any, *, query_prefix: str = QUERY_PREFIX, passage_prefix: str = PASSAGE_PREFIX) -> str:
    """The prefix for one encode call: passage for documents, query otherwise.

    `prompt_type` is mteb's `PromptType` (a str enum: "query" / "document") or
    None for symmetric tasks.
    """
    value = getattr(prompt_type, "value", prompt_type)
    return passage_prefix if value == "document" else query_prefix


def batch_texts(batch: dict) -> list[str]:
    """The texts of one mteb batch. mteb already joins a document's title and
    text into "text" (title + " " + text, stripped: E5's join), so use it as is."""
    return list(batch["text"])


class MtebEncoder(AbsEncoder):
    """mteb's encoder protocol around an e5jax `Encoder` (or anything with its
    `encode(texts, prefix, *, max_length, batch_size)` and `name`)."""

    def __init__(
        self,
        encoder: Any,
        *,
        query_prefix: str = QUERY_PREFIX,
        passage_prefix: str = PASSAGE_PREFIX,
        max_length: int = 512,
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        self.model = encoder
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.max_length = max_length
        self.batch_size = batch_size
        if ModelMeta is not None:
            model_name = name or f"e5jax/{str(getattr(encoder, 'name', 'model')).rstrip('/').split('/')[-1]}"
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites={"name": model_name, "revision": "local", "similarity_fn_name": ScoringFunction.COSINE}
            )

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None, **kwargs):
        """Embed every batch of `inputs` with E5's prefix for this prompt type."""
        prefix = e5_prefix(prompt_type, query_prefix=self.query_prefix, passage_prefix=self.passage_prefix)
        texts = [t for batch in inputs for t in batch_texts(batch)]
        emb = self.model.encode(texts, prefix, max_length=self.max_length, batch_size=self.batch_size)
        return np.asarray(emb, dtype=np.float32)
