"""TFDS builders (ArrayRecord, no TensorFlow) for pair and fine-tuning datasets.

A dataset's NAME is the user's choice (`e5jax build --name NAME`). TFDS keys a
builder's identity (its folder ``DATA_DIR/NAME/VERSION``) on the class's
``name`` attribute, so `builder_class` creates one small subclass per name at
run time, outside TFDS's registry (``skip_registration``) so that building two
datasets, or the same one twice, in one process never clashes. Reading back
needs no class at all: TFDS reads ``dataset_info.json`` and the features from
the folder, so ``tfds.data_source(NAME, data_dir=DIR)`` or
``tfds.builder_from_directory(DIR/NAME/1.0.0).as_data_source()`` work from a
fresh process without the JSONL shards (see `load_source`).

The same builder runs locally (a Python generator) or as an Apache Beam
pipeline (``beam_runner="DirectRunner"``, Dataflow, Flink, Spark...): both use
`records.examples_from_file`, so they keep and drop the same records. The
build summary (kept / dropped per reason, per split, per source) is stored in
the dataset's ``metadata.json``; the Beam path gathers it from Beam counters.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from e5jax.data.ccpairs import records
from e5jax.errors import E5Error
from e5jax.paths import is_url

VERSION = "1.0.0"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_BEAM_NAMESPACE = "e5jax"


def features_for(kind: str) -> tfds.features.FeaturesDict:
    """The stored features of each record kind (texts are UTF-8 strings)."""
    common = {"query": tfds.features.Text(), "source": tfds.features.Text(), "id": tfds.features.Text()}
    if kind == "pairs":
        return tfds.features.FeaturesDict({**common, "passage": tfds.features.Text()})
    return tfds.features.FeaturesDict(
        {
            **common,
            "positive": tfds.features.Text(),
            "negatives": tfds.features.Sequence(tfds.features.Text()),
            # [k+1] scores for (positive, negatives...); empty when no teacher scored it.
            "teacher_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }
    )


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base: JSONL pair shards -> `train` / `heldout` ArrayRecord splits."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "JSONL shards -> train / heldout (hash of the pair decides)."}
    KIND: ClassVar[str] = "pairs"

    def __init__(
        self,
        *,
        inputs: Sequence[str | os.PathLike] = (),
        heldout_fraction: float = 0.01,
        max_chars: int = records.DEFAULT_MAX_CHARS,
        use_beam: bool = False,
        **kwargs,
    ):
        # Set before super().__init__: TFDS calls `_info()` while constructing.
        self._inputs = list(inputs)
        self._heldout_fraction = float(heldout_fraction)
        self._max_chars = int(max_chars)
        self._use_beam = use_beam
        self._counts: collections.Counter[str] = collections.Counter()
        self._engine = "local"  # becomes "beam" once a Beam pipeline has really run
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default probes `importlib_resources` (a backport not installed
        # here) for any builder living in a package; this file is the answer.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"e5jax {self.KIND} dataset built from JSONL shards by `e5jax build`.",
            features=features_for(self.KIND),
            metadata=tfds.core.MetadataDict(
                kind=self.KIND, heldout_fraction=self._heldout_fraction, max_chars=self._max_chars
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # inputs are local / gs:// files, nothing to download
        files = records.expand_inputs(self._inputs)
        # TFDS refuses to write an empty split: no held-out split when none is asked for.
        splits = records.SPLITS if self._heldout_fraction > 0 else ("train",)
        return {split: self._generate_examples(files, split) for split in splits}

    def _generate_examples(self, files: list[epath.Path], split: str):
        kwargs = dict(kind=self.KIND, split=split, heldout_fraction=self._heldout_fraction, max_chars=self._max_chars)
        if self._use_beam:
            return _beam_split(files, **kwargs)
        return self._local_examples(files, **kwargs)

    def _local_examples(self, files, **kwargs):
        for i, path in enumerate(files):
            yield from records.examples_from_file(path, i, count=self._count, **kwargs)

    def _count(self, name: str) -> None:
        self._counts[name] += 1

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Beam only: the drop counters live in the pipeline's metrics."""
        from apache_beam.metrics.metric import MetricsFilter

        self._engine = "beam"
        query = pipeline_result.metrics().query(MetricsFilter().with_namespace(_BEAM_NAMESPACE))
        for c in query["counters"]:
            value = c.committed if c.committed is not None else c.attempted
            self._counts[c.key.metric.name] += int(value or 0)

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        super()._download_and_prepare(dl_manager, download_config)
        # Written to metadata.json right after this returns (inside TFDS).
        self.info.metadata["summary"] = records.summarize(dict(self._counts))
        self.info.metadata["built_with"] = self._engine

    @property
    def summary(self) -> dict:
        return records.summarize(dict(self._counts))


class PairsBuilder(_JsonlBuilder, skip_registration=True):
    """(query, passage) pairs for contrastive pre-training."""

    KIND = "pairs"


class FinetuneBuilder(_JsonlBuilder, skip_registration=True):
    """(query, positive, negatives, teacher_scores) records for fine-tuning."""

    KIND = "finetune"


# ------------------------------------------------------------------ Beam


def _beam_file_examples(item: tuple[int, str], **kwargs):
    """One shard -> its (key, example)s; counts go to Beam metrics (module level: picklable)."""
    from apache_beam.metrics import Metrics

    index, path = item

    def count(name: str) -> None:
        Metrics.counter(_BEAM_NAMESPACE, name).inc()

    yield from records.examples_from_file(path, index, count=count, **kwargs)


def _beam_split(files: list[epath.Path], *, split: str, **kwargs):
    """A PTransform producing one split; a shard is Beam's unit of parallel work."""
    import apache_beam as beam

    items = [(i, str(f)) for i, f in enumerate(files)]
    return (
        f"Shards_{split}" >> beam.Create(items)
        | f"Reshuffle_{split}" >> beam.Reshuffle()  # spread shards over workers
        | f"Parse_{split}" >> beam.FlatMap(_beam_file_examples, split=split, **kwargs)
    )


# ------------------------------------------------------------------ API


def builder_class(kind: str, name: str) -> type[_JsonlBuilder]:
    """A builder class whose TFDS identity (folder, `info.name`) is `name`."""
    if kind not in records.KINDS:
        raise E5Error(f"--kind must be one of {', '.join(records.KINDS)}, got {kind!r}")
    if not _NAME_RE.match(name):
        raise E5Error(f"dataset name {name!r} must be snake_case: lowercase letters, digits, '_'")
    base = PairsBuilder if kind == "pairs" else FinetuneBuilder
    camel = "".join(part.title() for part in name.split("_"))
    return type(camel, (base,), {"name": name, "__module__": __name__}, skip_registration=True)


def build_dataset(
    inputs: Sequence[str | os.PathLike],
    *,
    data_dir: str | os.PathLike,
    name: str,
    kind: str = "pairs",
    heldout_fraction: float = 0.01,
    max_chars: int = records.DEFAULT_MAX_CHARS,
    beam_runner: str | None = None,
    beam_options: Sequence[str] = (),
    overwrite: bool = False,
) -> dict:
    """Build `DATA_DIR/NAME/1.0.0` from JSONL shards and return the summary dict.

    `beam_runner` ("DirectRunner", "DataflowRunner", ...) switches to the Beam
    path; `beam_options` are Beam pipeline flags (``--project=...``) for it.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise E5Error(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}")
    if max_chars < 1:
        raise E5Error(f"--max-chars must be >= 1, got {max_chars}")
    records.expand_inputs(inputs)  # fail early, before TFDS creates folders
    cls = builder_class(kind, name)
    root = epath.Path(data_dir)
    final = root / name / VERSION
    if final.exists() and not overwrite:
        raise E5Error(f"{final} already exists; pass --overwrite or choose another --name")
    # Build into a hidden staging data dir and swap it in only on success: a
    # failed (or killed) build never touches the dataset already there, and
    # leaves no empty DATA_DIR/NAME behind.
    # Object stores have no folder rename, and the ArrayRecord writer cannot open
    # gs:// at all: a gs:// build is made in a local staging folder and uploaded
    # (e5jax.storage.upload_dataset: dataset_info.json, which marks a version as
    # built, goes last), so an interrupted build or upload is never taken for a dataset.
    remote = is_url(data_dir)
    if remote and beam_runner not in (None, "DirectRunner"):
        raise E5Error(f"--data-dir {data_dir}: the ArrayRecord writer cannot write a URL, so a {beam_runner} build "
                      "cannot write it from its workers; build with DirectRunner (staged locally, then uploaded) "
                      "or into a folder the workers share (a gcsfuse mount)")
    root_existed = root.exists()
    staging = (epath.Path(tempfile.mkdtemp(prefix=f"e5jax-build-{name}-")) if remote
               else root / f".{name}.building-{uuid.uuid4().hex[:12]}")
    builder = cls(
        data_dir=str(staging),
        inputs=inputs,
        heldout_fraction=heldout_fraction,
        max_chars=max_chars,
        use_beam=bool(beam_runner or beam_options),
        file_format="array_record",
    )
    options = None
    if beam_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(list(beam_options))
    modes = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        download_mode=modes.REUSE_CACHE_IF_EXISTS,
        beam_runner=beam_runner,
        beam_options=options,
        try_download_gcs=False,
    )
    try:
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:  # TFDS: 'Failed to finalize writing of split "x": No examples were yielded.'
            if "No examples were yielded" not in str(e):
                raise
            split = "heldout" if '"heldout"' in str(e) else "train"
            raise E5Error(
                f"no records kept for split {split!r} of {name!r} ({_dropped_line(builder.summary)}); "
                + ("raise --heldout-fraction or set it to 0" if split == "heldout" else "check the input shards")
            ) from e
        if remote:
            from e5jax.storage import upload_dataset

            upload_dataset(staging / name / VERSION, final)
        else:
            _swap_in(staging / name / VERSION, final)
    finally:
        if staging.exists():
            staging.rmtree()
        if not remote and not root_existed and root.exists() and not any(root.iterdir()):
            root.rmdir()
    summary = builder.summary
    summary.update(path=str(final), kind=kind, heldout_fraction=heldout_fraction, max_chars=max_chars)
    return summary


def _swap_in(built: epath.Path, final: epath.Path) -> None:
    """Replace `final` by the freshly built `built`; the old version is deleted only once the new one is in place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
    had_old = final.exists()
    if had_old:
        final.rename(old)
    try:
        built.rename(final)
    except BaseException:
        if had_old:
            old.rename(final)
        raise
    if had_old:
        old.rmtree()


def _dropped_line(summary: dict) -> str:
    counts = collections.Counter(summary["unassigned"])
    for s in summary["splits"].values():
        counts.update(s["dropped"])
        counts["kept"] += s["kept"]
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no lines read"


def dataset_dir(data_dir: str | os.PathLike, name: str) -> epath.Path:
    """The newest built version folder of `name`, or a one-line error naming what to build.

    epath, not pathlib: `data.data_dir` may be gs://..., which pathlib folds into `gs:/...`.
    """
    root = epath.Path(data_dir) / name
    try:
        built = [p for p in root.glob("*") if (p / "dataset_info.json").exists()]
    except ImportError as e:  # fsspec names the missing filesystem package (gcsfs for gs://)
        raise E5Error(f"cannot read {data_dir}: {e}") from e
    versions = sorted(
        built,
        key=lambda p: tfds.core.Version(p.name) if re.match(r"^\d+\.\d+\.\d+$", p.name) else tfds.core.Version("0.0.0"),
    )
    if not versions:
        raise E5Error(f"no dataset {name!r} in {data_dir}; run `e5jax build --data-dir {data_dir} --name {name} ...`")
    return versions[-1]


def load_source(data_dir: str | os.PathLike, name: str, split: str = "train"):
    """Random-access source (`len`, `[i]`) over one split; texts come back as bytes."""
    builder = tfds.builder_from_directory(str(dataset_dir(data_dir, name)))
    if split not in builder.info.splits:
        raise E5Error(f"dataset {name!r} has splits {', '.join(builder.info.splits)}, not {split!r}")
    return builder.as_data_source(split=split)


def load_summary(data_dir: str | os.PathLike, name: str) -> dict:
    """The build summary stored in the dataset's metadata.json."""
    builder = tfds.builder_from_directory(str(dataset_dir(data_dir, name)))
    return dict(builder.info.metadata or {})
