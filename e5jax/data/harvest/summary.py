"""The harvest summary: records read, pairs kept, pairs dropped and why."""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field

from etils import epath


@dataclass
class Summary:
    """Counts for one source; `to_dict` is what `summary.json` holds."""

    source: str
    inputs: list[str] = field(default_factory=list)
    records: int = 0
    kept: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def to_dict(self) -> dict:
        rate = self.kept / self.seconds if self.seconds > 0 else 0.0
        return {
            "sources": {
                self.source: {
                    "inputs": self.inputs,
                    "records": self.records,
                    "kept": self.kept,
                    "dropped": dict(sorted(self.dropped.items())),
                    "dropped_total": sum(self.dropped.values()),
                }
            },
            "kept": self.kept,
            "shards": self.shards,
            "seconds": round(self.seconds, 3),
            "pairs_per_second": round(rate, 1),
            "config": self.config,
        }

    def write(self, out_dir: str | os.PathLike) -> epath.Path:
        """`out_dir/summary.json`; local or remote (gs:// through epath)."""
        path = epath.Path(out_dir) / "summary.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def format(self) -> str:
        """Human-readable lines for the terminal."""
        lines = [f"{self.source}: kept {self.kept:,} pairs from {self.records:,} records in {self.seconds:.1f}s"]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:>10,}  {reason}")
        return "\n".join(lines)
