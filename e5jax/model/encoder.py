"""Text encoder = BertModel + pooling (+ L2 norm), created sharded, and the
user-facing `Encoder.from_pretrained(path).encode(texts, prefix=...)`.

`Encoder` and `load_pretrained` serve both model families: BERT (`TextEncoder`
here) and decoder LLMs (`decoder.DecoderTextEncoder`: Llama / Mistral / Qwen2 /
Qwen3, last-token or mean pooling). `backbone` and `read_model_config` are the
one place they are told apart.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from e5jax.config import DEFAULT_RULES, MeshConfig
from e5jax.data.packing import first_fit_decreasing, pack
from e5jax.data.padding import bucket_for, bucket_lengths, pad_to_bucket
from e5jax.errors import E5Error
from e5jax.model import axes as ax
from e5jax.model import hf
from e5jax.model.bert import BertConfig, BertModel
from e5jax.paths import local

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean over tokens (E5's pooling), in fp32."""
    m = mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def l2_normalize(x: jax.Array) -> jax.Array:
    # Same clamp as torch.nn.functional.normalize (eps=1e-12).
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TextEncoder(nnx.Module):
    """ids → one embedding per text. The shared tower E5 uses for queries and passages."""

    def __init__(self, cfg: BertConfig, *, pooling: str = "mean", normalize: bool = True,
                 dtype: str = "float32", remat: bool = False, with_pooler: bool = True, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, dtype=dtype, remat=remat, with_pooler=with_pooler, rngs=rngs)
        self.pooling = pooling
        self.normalize = normalize

    def __call__(self, input_ids, attention_mask, *, dropout_key=None) -> jax.Array:
        hidden = self.bert(input_ids, attention_mask, dropout_key=dropout_key)
        if self.pooling == "mean":
            emb = mean_pool(hidden, attention_mask)
        else:
            emb = hidden[:, 0].astype(jnp.float32)
        return l2_normalize(emb) if self.normalize else emb

    def encode_packed(self, input_ids, segment_ids, positions, texts_per_group: int, *, seeds=None,
                      row_blocks: int = 1) -> jax.Array:
        """Packed rows [G, R, P] (`e5jax.data.packing`) → embeddings [G, b, H], b = `texts_per_group`.

        `seeds` [G, b] uint32: each text's dropout seed (None = no dropout). A
        text's embedding equals what `__call__` gives it alone in a padded row.
        `row_blocks` > 1 runs each group's rows through the encoder as that many
        independent blocks (a text never spans rows, so nothing crosses a block):
        on a CPU, XLA then overlaps the blocks' ops on its cores (`model.row_blocks`).
        """
        G, R, P = input_ids.shape
        token_seeds = None
        if seeds is not None:  # each token carries its own text's seed (segment 0 = padding, seed unused)
            padded = jnp.concatenate([jnp.zeros((G, 1), jnp.uint32), seeds.astype(jnp.uint32)], axis=1)
            token_seeds = jnp.take_along_axis(padded, segment_ids.reshape(G, R * P), axis=1).reshape(G, R, P)
        cuts = np.linspace(0, R, min(max(row_blocks, 1), R) + 1).round().astype(int)
        hidden = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):  # rows split within each group: a device keeps its own
            flat = lambda x: x[:, lo:hi].reshape(G * (hi - lo), P)  # noqa: E731
            h = self.bert(flat(input_ids), None, segment_ids=flat(segment_ids), positions=flat(positions),
                          dropout_seeds=None if token_seeds is None else flat(token_seeds))
            hidden.append(h.reshape(G, (hi - lo) * P, -1))
        hidden = hidden[0] if len(hidden) == 1 else jnp.concatenate(hidden, axis=1)  # [G, R * P, H]
        # Pool per group: a segment sum over the group's tokens, segment 0 (padding) dropped.
        weight = segment_ids > 0 if self.pooling == "mean" else (segment_ids > 0) & (positions == 0)
        h = hidden.astype(jnp.float32) * weight.reshape(G, R * P, 1)
        seg = segment_ids.reshape(G, R * P)
        pool = jax.vmap(lambda x, s: jax.ops.segment_sum(x, s, num_segments=texts_per_group + 1))
        sums = pool(h, seg)[:, 1:]
        counts = pool(weight.reshape(G, R * P, 1).astype(jnp.float32), seg)[:, 1:]
        emb = sums / jnp.maximum(counts, 1e-9)
        return l2_normalize(emb) if self.normalize else emb


# ------------------------------------------------------------ construction


def build_sharded(make, mesh: Mesh, rules=DEFAULT_RULES, *, params: dict[str, np.ndarray] | None = None,
                  key_of=lambda path: path):
    """The nnx module `make()` builds, with parameters born sharded on `mesh`.

    No accelerator ever holds the whole model. Given `params` (host numpy, e.g.
    from a HF checkpoint, keyed by `key_of(state path)`) each array is placed
    straight into its sharding. Random init is compiled for and run on the host
    (every process draws the same values from the same seed), then placed the
    same way: compiled for an H200, the ~200 threefry draws of BERT-base took
    over 3 minutes to compile (`benchmarks/gpu_step.py`, README), on the host ~5 s.
    """
    graphdef, abs_state = nnx.split(nnx.eval_shape(make))
    shardings = ax.state_shardings(abs_state, mesh, rules)
    if params is None:
        try:
            host_device = jax.local_devices(backend="cpu")[0]
        except RuntimeError:  # JAX_PLATFORMS without cpu: draw on the mesh, born sharded
            return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()), out_shardings=shardings)())
        with jax.default_device(host_device):
            host = jax.device_get(jax.jit(lambda: nnx.state(make()))())
        state = jax.device_put(host, shardings)
    else:
        flat_sh = hf.flatten_state(shardings)
        values = {}
        for path, var in hf.flatten_state(abs_state).items():
            key = key_of(path)
            if key not in params:
                raise E5Error(f"no weights for {path}")
            if tuple(np.shape(params[key])) != tuple(var.shape):
                raise E5Error(f"shape mismatch for {path}: {np.shape(params[key])} vs {tuple(var.shape)}")
            values[path] = jax.device_put(np.asarray(params[key], np.float32), flat_sh[path])
        state = jax.tree.map(lambda x: x, abs_state)
        nnx.replace_by_pure_dict(state, _nest(values))
    return nnx.merge(graphdef, state)


def create_sharded(cfg: BertConfig, mesh: Mesh, rules=DEFAULT_RULES, *, seed: int = 0,
                   params: dict[str, np.ndarray] | None = None, **kwargs) -> TextEncoder:
    """A TextEncoder born sharded (see `build_sharded`); `params` keyed without 'bert/'."""
    return build_sharded(lambda: TextEncoder(cfg, rngs=nnx.Rngs(seed), **kwargs), mesh, rules, params=params,
                         key_of=lambda path: path.removeprefix("bert/"))


def _nest(flat: dict[str, object]) -> dict:
    """{'a/0/b': v} → {'a': {0: {'b': v}}} (the pure-dict form nnx expects)."""
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split("/")]
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


def encoder_params(model: TextEncoder) -> dict[str, np.ndarray]:
    """Host copy of the BertModel parameters, keyed by e5jax path (for export)."""
    flat = hf.flatten_state(nnx.state(model.bert, nnx.Param))
    return {k: np.asarray(jax.device_get(v[...])) for k, v in flat.items()}


def backbone(model):
    """The network under a text encoder's pooling: `TextEncoder.bert` (`BertModel`) or
    `DecoderTextEncoder.decoder` (`decoder.DecoderModel`). Both carry `.cfg` (with
    `hidden_size` and `max_length`) and `.dtype` (the compute dtype)."""
    from e5jax.decoder_export import is_decoder

    return model.decoder if is_decoder(model) else model.bert


def read_model_config(folder: pathlib.Path):
    """A model folder's architecture: a `decoder.DecoderConfig` where its config.json names a
    Llama / Mistral / Qwen2 / Qwen3 model (`hf_decoder.is_decoder_folder`), else a `BertConfig`."""
    from e5jax.model import hf_decoder

    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise E5Error(f"{folder} is a PEFT adapter folder (`e5jax export --peft`), not a whole model: load "
                      "the merged export (`e5jax export` without --peft) or the training workdir instead")
    if hf_decoder.is_decoder_folder(folder):
        return hf_decoder.read_config(folder)[0]
    return hf.read_config(folder)[0]


def read_pooling(folder: pathlib.Path) -> tuple[str, bool]:
    """Pooling mode and normalisation as a sentence-transformers folder records them."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return "mean", True  # a plain HF folder: E5's convention
    mods = json.loads(modules.read_text())
    pooling, normalize = "mean", False
    for m in mods:
        if m["type"].endswith("Pooling"):
            pc = json.loads((folder / m["path"] / "config.json").read_text())
            if pc.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif pc.get("pooling_mode") == "cls":
                pooling = "cls"
        if m["type"].endswith("Normalize"):
            normalize = True
    return pooling, normalize


def load_pretrained(path: str | os.PathLike, *, mesh: Mesh | None = None, rules=DEFAULT_RULES,
                    dtype: str = "float32", remat: bool = False, dropout: float = -1.0,
                    pooling: str | None = None, normalize: bool | None = None):
    """A TextEncoder with the weights of a local HF / sentence-transformers / e5jax-export folder;
    a `decoder.DecoderTextEncoder` for a decoder folder (`read_model_config`), with the pooling
    the folder records (`decoder.read_decoder_pooling`: an e5jax export's, else the last token)."""
    folder = local(path, "model folder", "a Hugging Face model folder is read with local-file APIs")
    cfg = read_model_config(folder)
    if not isinstance(cfg, BertConfig):
        from e5jax.model.decoder import load_decoder_pretrained

        return load_decoder_pretrained(folder, mesh=mesh, rules=rules, dtype=dtype, remat=remat, dropout=dropout,
                                       pooling=pooling, normalize=normalize)
    if dropout >= 0:
        import dataclasses

        cfg = dataclasses.replace(cfg, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    tensors = hf.read_tensors(folder)
    p_mode, p_norm = read_pooling(folder)
    pooling = pooling or p_mode
    normalize = p_norm if normalize is None else normalize
    mesh = mesh or ax.make_mesh(MeshConfig(), jax.devices()[:1])
    kwargs = dict(pooling=pooling, normalize=normalize, dtype=dtype, remat=remat)
    abstract = nnx.eval_shape(lambda: TextEncoder(cfg, rngs=nnx.Rngs(0), **kwargs))
    shapes = {k.removeprefix("bert/"): tuple(v.shape) for k, v in hf.flatten_state(nnx.state(abstract)).items()}
    params, _ = hf.hf_to_params(cfg, tensors, shapes)
    if "pooler/kernel" not in params:
        # Checkpoints saved without HF's pooler (add_pooling_layer=False) get a fresh
        # one, as transformers does, so every e5jax encoder has one parameter layout.
        rng = np.random.default_rng(0)
        params["pooler/kernel"] = (rng.standard_normal(shapes["pooler/kernel"]) * cfg.initializer_range
                                   ).astype(np.float32)
        params["pooler/bias"] = np.zeros(shapes["pooler/bias"], np.float32)
    return create_sharded(cfg, mesh, rules, params=params, **kwargs)


def default_dtype() -> str:
    """Inference compute dtype: bf16 where the hardware computes it natively (TPU,
    GPU, CPUs with AVX512-BF16 / AMX), fp32 elsewhere. bf16 embeddings keep cosine
    >= 0.9999 to fp32 (tests/model/test_parity.py) at ~2x the speed on such CPUs.
    `E5JAX_DTYPE=float32|bfloat16` overrides it."""
    forced = os.environ.get("E5JAX_DTYPE", "")
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise E5Error(f"E5JAX_DTYPE must be float32 or bfloat16, got {forced!r}")
        return forced
    if jax.default_backend() in ("tpu", "gpu"):
        return "bfloat16"
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def encode_lengths(max_length: int, shapes: int = 8) -> tuple[int, ...]:
    """Padded lengths `encode` uses: `shapes` evenly spaced lengths (multiples
    of 8) ending at `max_length`, so a run compiles at most `shapes` shapes.

    Evenly spaced rather than powers of two on purpose: a batch of sorted texts
    is padded to at most one step past its longest text. On 2,000 Debian
    passages at max length 128 (step 16) that computes 12% more FLOPs than the
    real tokens need; powers of two computed 33% more (measured with an earlier
    benchmarks/encode.py). Used by the padded path, `encode(packed=False)`.
    """
    return bucket_lengths(max_length, shapes)


def _compute_dtype_kernels(state, dtype):
    """The state with every Dense kernel cast once to the compute dtype.

    `Dense` casts its fp32 kernel to the activations' dtype before each dot, so
    at inference a bf16 model re-converted all its weights on every call (XLA
    ran these converts as separate passes); stored in bf16 they are converted
    once, and the dots see exactly the operands they saw before. Biases,
    LayerNorm parameters and embedding tables stay fp32: they enter fp32 sums.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return state

    def cast(path, x):  # path: (..., DictKey('kernel'), GetAttrKey('value')) for a Dense kernel
        return x.astype(dtype) if any(getattr(k, "key", None) == "kernel" for k in path) else x

    return jax.tree_util.tree_map_with_path(cast, state)


# Tokens one packed call gives each device on a CPU. The dots' fp32 outputs
# ([tokens, intermediate_size]) then stay in cache: on the 2-core Zen 4 the
# MLP's input dot ran at ~100 GFLOP/s per CPU-second with 1-2k-token rows
# against 73 with 8k (fp32; bf16 200 against 128), and the whole MiniLM
# forward took the least CPU time per row with 16 rows of 128 tokens.
CPU_TOKENS_PER_CALL = 2048


def _fill_group(order, lengths, head: int, tail: int, rows: int, slots: int, P: int):
    """Texts for one packing group of `rows` rows of `P` tokens and `slots` slots,
    from `order` (text indices, longest first) between `head` and `tail`.

    The longest texts go in first (first fit), then the shortest fill the room
    they left. Taken in sorted order alone, a call's texts are all about as
    long, and rows of 100-token texts keep their 28 free tokens (on 256 Debian
    passages 15% of the computed tokens were empty); short texts from the
    other end fill those gaps. `pack` lays the set out by first-fit decreasing:
    texts from the tail go back until that plan fits in `rows`.
    Returns (members, rows used, head, tail).
    """
    room: list[int] = []  # free tokens per row
    members: list[int] = []
    while head <= tail and len(members) < slots:  # longest first
        need = lengths[order[head]]
        r = next((r for r, free in enumerate(room) if free >= need), None)
        if r is None:
            if len(room) == rows:
                break
            room.append(P)
            r = len(room) - 1
        room[r] -= need
        members.append(int(order[head]))
        head += 1
    from_tail: list[int] = []
    while head <= tail and len(members) + len(from_tail) < slots:  # then the shortest into the gaps
        need = lengths[order[tail]]
        r = next((r for r, free in enumerate(room) if free >= need), None)
        if r is None:
            break
        room[r] -= need
        from_tail.append(int(order[tail]))
        tail -= 1
    while True:
        n_rows = len(first_fit_decreasing([lengths[i] for i in members + from_tail], P))
        if n_rows <= rows or not from_tail:
            return members + from_tail, n_rows, head, tail
        from_tail.pop()  # the longest text taken from the tail goes back
        tail += 1


class Encoder:
    """Embed texts with a pre-trained or e5jax-trained model.

    BERT-family or decoder (Llama / Mistral / Qwen2 / Qwen3: an e5jax decoder export, a plain
    HF folder, or a decoder training workdir through `e5jax.load`), each with the pooling it
    was trained with. A decoder's texts are tokenized as training tokenizes them (one call of
    the tokenizer, special tokens on: its post-processor appends the EOS whose hidden state
    "last" pooling takes); packed rows are causal within each text, RoPE positions restart per
    text (`DecoderTextEncoder.encode_packed`), so packed and padded give the same embeddings.
    Queries of an E5-mistral model take `prefix=decoder_export.query_prompt(task)`.

    >>> from e5jax import Encoder
    >>> enc = Encoder.from_pretrained(tokenizer_dir, dtype="float32")  # an HF / export folder
    >>> emb = enc.encode(["how to resize a partition", "GNU Parted"], prefix="query: ")
    >>> emb.shape, emb.dtype, [round(float(v), 4) for v in (emb ** 2).sum(-1)]
    ((2, 384), dtype('float32'), [1.0, 1.0])
    """

    def __init__(self, model: TextEncoder, tokenizer, *, name: str = "", mesh: Mesh | None = None,
                 max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.mesh = mesh
        self.config = backbone(model).cfg  # BertConfig or DecoderConfig: hidden_size, max_length
        self.max_length = min(max_length or 512, self.config.max_length)
        self._graphdef, state = nnx.split(model)
        self._state = _compute_dtype_kernels(state, getattr(backbone(model), "dtype", jnp.float32))
        graphdef = self._graphdef

        @jax.jit
        def forward(state, ids, mask):
            return nnx.merge(graphdef, state)(ids, mask)

        @functools.partial(jax.jit, static_argnums=4)
        def forward_packed(state, ids, seg, pos, texts_per_group):
            return nnx.merge(graphdef, state).encode_packed(ids, seg, pos, texts_per_group)

        self._forward = forward
        self._forward_packed = forward_packed

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: str | None = None, mesh: Mesh | None = None,
                        **kwargs) -> "Encoder":
        """`dtype` is the compute dtype; None = `default_dtype()` (parameters stay fp32)."""
        from transformers import AutoTokenizer

        dtype = dtype or default_dtype()
        folder = local(path, "model folder", "a Hugging Face model folder is read with local-file APIs")
        model = load_pretrained(folder, mesh=mesh, dtype=dtype, **kwargs)
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise E5Error(f"cannot load a tokenizer from {folder}: {type(e).__name__}: {e}") from e
        if getattr(model, "pooling", "") == "last":  # a plain Llama / Mistral / Qwen folder's tokenizer
            from e5jax.model.eos import ensure_eos

            ensure_eos(tok, f"the tokenizer in {folder}")
        return cls(model, tok, name=str(folder.resolve()), mesh=mesh)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def _data_shards(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        # One call over the whole list: the fast (Rust) tokenizer batches it; only
        # the ids are asked for, so no masks or type ids are built and thrown away.
        # The same call as training's (`data.pipeline.TokenizeBatch`): special tokens on,
        # truncation first, so a decoder's EOS (its tokenizer's post-processor) ends every text.
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)
        return enc["input_ids"]

    def encode(self, texts: Sequence[str], prefix: str = "", *, max_length: int | None = None,
               batch_size: int = 64, show_progress: bool | None = None, packed: bool = True) -> np.ndarray:
        """float32 [len(texts), dim] in input order.

        `packed` (default): texts are packed into rows of up to `max_length`
        tokens as training packs them (`e5jax.data.packing`: first-fit, attention
        block-diagonal, pooling per text), so padding is not computed; a call
        holds about `batch_size` rows' worth of tokens (on a CPU at most
        `CPU_TOKENS_PER_CALL` per device). `packed=False`: one text
        per row, `batch_size` rows padded to a few bucket lengths (the plain
        reference the packed path is tested against). Both sort texts by length
        and compile a handful of shapes over a long run.
        """
        if batch_size < 1:
            raise E5Error(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 2:  # [CLS] and [SEP] take two tokens
            raise E5Error(f"max_length must be >= 2 (or None: the encoder's default), got {max_length}")
        texts = [prefix + t for t in texts]
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        max_length = min(self.max_length if max_length is None else max_length, self.config.max_length)
        ids = self.tokenize(texts, max_length)
        batches = (self._packed_calls if packed else self._padded_calls)(ids, max_length, batch_size)
        out = np.zeros((n, self.dim), np.float32)
        show = n > 10 * batch_size if show_progress is None else show_progress
        from tqdm.auto import tqdm

        pending = []  # (text indices, device result): fetch late so the host prepares the next call meanwhile

        def fetch_one():
            rows, emb, where = pending.pop(0)
            emb = np.asarray(emb).reshape(-1, self.dim)
            out[rows] = emb[: len(rows)] if where is None else emb[where]

        with tqdm(total=n, desc="encode", unit="text", disable=not show) as bar:
            for idx, result, where in batches:
                pending.append((idx, result, where))
                if len(pending) > 1:
                    fetch_one()
                bar.update(len(idx))
            while pending:
                fetch_one()
        return out

    def _put(self, *arrays):
        """Host arrays onto the mesh, split along the first (batch) axis."""
        if self.mesh is None:
            return arrays
        sh = NamedSharding(self.mesh, jax.sharding.PartitionSpec(ax.BATCH_AXES))
        return tuple(jax.device_put(a, sh) for a in arrays)

    def _padded_calls(self, ids: list[list[int]], max_length: int, batch_size: int):
        """(text indices, [batch, dim] embeddings) per call: one text per row."""
        order = np.argsort([-len(x) for x in ids], kind="stable")
        buckets = encode_lengths(max_length)
        pad_id = self.tokenizer.pad_token_id or 0
        shards = self._data_shards
        batch_size = -(-batch_size // shards) * shards
        for start in range(0, len(ids), batch_size):
            idx = order[start:start + batch_size]
            batch, mask = pad_to_bucket([ids[i] for i in idx], buckets, pad_id, num_rows=batch_size)
            yield idx, self._forward(self._state, *self._put(batch, mask)), None

    def packed_plan(self, ids: list[list[int]], max_length: int, batch_size: int):
        """Host side of the packed path: per call, (`pack`'s arrays, text indices per group, b).

        A call is [G, R, P]: G groups (one per device along the batch axes),
        each of R rows of P tokens and b text slots, packed by
        `e5jax.data.packing.pack`. P is the bucket that holds the longest text;
        R = batch_size * max_length / (G * P), so a call holds the tokens of
        `batch_size` rows of `max_length` (on a CPU at most
        `CPU_TOKENS_PER_CALL` per device); b = R * P / 16 (texts of 16 tokens or
        more can fill the rows). Which texts share a group: `_fill_group`;
        `pack` lays them out by first-fit decreasing. Every call but the last
        has one shape; the last rounds its rows up to a power of two (one short
        text costs one row).
        """
        G = self._data_shards
        order = np.argsort([-len(x) for x in ids], kind="stable")
        P = bucket_for(len(ids[order[0]]), encode_lengths(max_length))
        tokens = batch_size * max_length // G  # per device
        if jax.default_backend() == "cpu":
            tokens = min(tokens, CPU_TOKENS_PER_CALL)
        rows = max(1, -(-tokens // P))
        slots = max(1, rows * P // 16)
        pad_id = self.tokenizer.pad_token_id or 0
        lengths = [len(x) for x in ids]
        head, tail = 0, len(order) - 1  # the longest and the shortest text not yet placed
        while head <= tail:
            groups: list[list[int]] = []  # text indices per group
            used = 1  # most rows any group fills
            while head <= tail and len(groups) < G:
                members, n_rows, head, tail = _fill_group(order, lengths, head, tail, rows, slots, P)
                groups.append(members)
                used = max(used, n_rows)
            groups += [[] for _ in range(G - len(groups))]  # the last call may leave groups empty
            r_call = rows if head <= tail else min(rows, 1 << (used - 1).bit_length())
            texts = [t for g in groups for t in [ids[i] for i in g] + [[]] * (slots - len(g))]
            packed = pack(texts, groups=G, pack_len=P, pad_id=pad_id, row_step=r_call)
            yield packed, groups, slots

    def _packed_calls(self, ids: list[list[int]], max_length: int, batch_size: int):
        """(text indices, [G, b, dim] embeddings, where each text's is) per call, texts packed."""
        for packed, groups, slots in self.packed_plan(ids, max_length, batch_size):
            arrays = self._put(packed["input_ids"], packed["segment_ids"], packed["positions"])
            emb = self._forward_packed(self._state, *arrays, slots)  # [G, slots, dim]
            where = np.asarray([g * slots + k for g, members in enumerate(groups) for k in range(len(members))])
            yield np.asarray([i for g in groups for i in g], np.int64), emb, where
