"""Fine-tuning data: converters from MS MARCO / NQ (DPR) / NLI to one JSONL
record layout (`records.py`), read by the TFDS fine-tuning builder."""

from e5jax.data.finetune.records import (
    Record,
    Stats,
    join_title_text,
    make_record,
    open_text,
    pick_negatives,
    read_records,
    record_rng,
    sample_in_order,
    write_records,
)

__all__ = [
    "Record",
    "Stats",
    "join_title_text",
    "make_record",
    "open_text",
    "pick_negatives",
    "read_records",
    "record_rng",
    "sample_in_order",
    "write_records",
]
