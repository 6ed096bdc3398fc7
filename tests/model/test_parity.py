"""The NNX encoder reproduces real checkpoints: hidden states vs transformers,
pooled embeddings vs sentence-transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from e5jax.model.bert import BertConfig
from e5jax.model.encoder import Encoder, load_pretrained

MAX_LEN = 128  # long sentences are truncated here


def _hidden(model, ids, mask):
    return np.asarray(jax.jit(lambda i, m: model.bert(i, m))(jnp.asarray(ids), jnp.asarray(mask)))


def test_minilm_hidden_states_match_transformers(minilm_dir, real_sentences):
    from transformers import BertModel

    assert len(real_sentences) >= 50
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    batch = tok(real_sentences, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="np")
    assert batch["input_ids"].shape[1] == MAX_LEN  # the long ones really were truncated
    ref = BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(batch["input_ids"]),
                   attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state.numpy()
    model = load_pretrained(minilm_dir)
    got = _hidden(model, batch["input_ids"], batch["attention_mask"])
    m = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[m], want[m], atol=1e-4, rtol=0)


def test_minilm_embeddings_match_sentence_transformers(minilm_dir, real_sentences):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir), device="cpu")
    st.max_seq_length = MAX_LEN
    want = st.encode(real_sentences, batch_size=16, convert_to_numpy=True)
    enc = Encoder.from_pretrained(minilm_dir)
    got = enc.encode(real_sentences, max_length=MAX_LEN, batch_size=16)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos.min()
    # DESIGN.md's known value: "This is an example sentence" starts 0.0677, 0.0635, 0.0487.
    ex = enc.encode(["This is an example sentence"])[0]
    np.testing.assert_allclose(ex[:3], [0.0677, 0.0635, 0.0487], atol=1e-4)
    # Output is in input order even though encode sorts by length.
    single = enc.encode([real_sentences[7]], max_length=MAX_LEN)[0]
    np.testing.assert_allclose(single, got[7], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory):
    """A randomly initialised small XLM-R saved by transformers itself."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=80, type_vocab_size=1,
                           pad_token_id=1, hidden_act="gelu")
    torch.manual_seed(0)
    model = XLMRobertaModel(cfg).eval()
    path = tmp_path_factory.mktemp("xlmr")
    model.save_pretrained(str(path))
    return path, model


def test_xlmr_matches_transformers(tiny_xlmr):
    path, ref = tiny_xlmr
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 300, size=(6, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    for r, n in enumerate([40, 33, 20, 5, 1, 12]):  # right padding with pad_token_id=1
        ids[r, n:] = 1
        mask[r, n:] = 0
    ids[:, 0] = 0  # <s>
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    model = load_pretrained(path)
    assert model.bert.cfg.position_offset == 2
    got = _hidden(model, ids, mask)
    m = mask.astype(bool)
    np.testing.assert_allclose(got[m], want[m], atol=1e-4, rtol=0)
    # pooled + normalised vs the same computation in torch
    pooled = (want * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    emb = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    cos = (emb * pooled).sum(1)
    assert cos.min() >= 0.99999


def test_default_dtype_follows_the_hardware(monkeypatch):
    from e5jax.model.encoder import default_dtype

    monkeypatch.delenv("E5JAX_DTYPE")
    flags = open("/proc/cpuinfo").read()
    want = "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    assert default_dtype() == want
    monkeypatch.setenv("E5JAX_DTYPE", "float32")
    assert default_dtype() == "float32"


def test_bf16_compute_stays_close(minilm_dir, real_sentences):
    f32 = Encoder.from_pretrained(minilm_dir, dtype="float32").encode(real_sentences[:24], max_length=64)
    b16 = Encoder.from_pretrained(minilm_dir, dtype="bfloat16").encode(real_sentences[:24], max_length=64)
    assert ((f32 * b16).sum(1)).min() >= 0.999


def test_config_from_hf_fields(minilm_dir):
    raw = json.loads((minilm_dir / "config.json").read_text())
    cfg = BertConfig.from_hf(raw)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (384, 6, 12, 1536)
    assert cfg.position_offset == 0 and cfg.max_length == 512
