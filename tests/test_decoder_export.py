"""A LoRA-tuned decoder encoder leaves e5jax in the two forms the PyTorch world loads:

* merged weights: an HF folder `transformers.AutoModel` loads with no missing or
  unexpected keys, and `SentenceTransformer` loads with last-token pooling and the
  E5-mistral query prompt; its embeddings (queries with the prompt, documents
  without) equal e5jax's within 1e-5;
* a PEFT adapter folder that `peft.PeftModel.from_pretrained(base, folder)` puts
  on the base model, giving the same embeddings.

The tokenizer appends the EOS in its post-processor (tests/decoder_tokenizer.py),
so e5jax, transformers and sentence-transformers all end every text with it.
"""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from e5jax.data.finetune.synthetic import format_query
from e5jax.decoder_export import query_prompt
from e5jax.export import export, export_peft
from e5jax.model import axes as ax
from e5jax.model import hf_decoder
from e5jax.model.decoder import DecoderConfig, create_decoder_sharded, load_decoder_pretrained
from tests.decoder_tokenizer import build_tokenizer
from tests.fixtures.real_text import debian_records

INSTRUCTION = "Given a Debian package summary, retrieve the package description"


@pytest.fixture(scope="session")
def decoder_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.getbasetemp() / "decoder_tokenizer")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, decoder_tokenizer):
    """(base HF folder, LoRA-tuned e5jax model, tokenizer): a random 2-layer Mistral saved as an HF
    folder, loaded back with rank-8 adapters whose B is no longer zero (as after training)."""
    from transformers import AutoTokenizer

    cfg = DecoderConfig.from_hf(json.loads(open("configs/tiny_decoder.json").read()))
    mesh = ax.make_mesh(devices=jax.devices()[:1])
    base_dir = tmp_path_factory.mktemp("base")
    hf_decoder.save_folder(base_dir, cfg, hf_decoder.model_params(create_decoder_sharded(cfg, mesh, seed=5)))
    tok = AutoTokenizer.from_pretrained(str(decoder_tokenizer))
    tok.save_pretrained(str(base_dir))
    model = load_decoder_pretrained(base_dir, mesh=mesh, lora_rank=8, lora_alpha=16.0, seed=2)
    rng = np.random.default_rng(0)
    state = nnx.state(model, nnx.LoRAParam)
    for path, v in nnx.to_flat_state(state):
        if path[-1] == "lora_b":
            v[...] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
    nnx.update(model, state)
    return base_dir, model, tok


def texts():
    recs = debian_records()[100:106]
    return [r["short"] for r in recs], [r["long"] for r in recs]  # queries, documents (some cut at 64)


def e5jax_embed(model, tok, batch):
    enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="np")
    return np.asarray(nnx.jit(lambda m, i, k: m(i, k))(model, enc["input_ids"], enc["attention_mask"]))


def test_merged_export_loads_in_automodel_and_sentence_transformers(tuned, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    _, model, tok = tuned
    out = export(model, tok, tmp_path / "merged", max_seq_length=64)
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"].startswith("Instruct: ") and prompts["passage"] == ""

    hf, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(hf).__name__ == "MistralModel"

    queries, docs = texts()
    st = SentenceTransformer(str(out), device="cpu")
    prompt = query_prompt("Given a web search query, retrieve relevant passages that answer the query")
    assert st.prompts["query"] == prompt
    got_q = st.encode(queries, prompt_name="query", convert_to_numpy=True)
    got_d = st.encode(docs, convert_to_numpy=True)
    # e5jax: the query text with the instruction, as `e5jax convert synthetic` stores it.
    want_q = e5jax_embed(model, tok, [prompt + q for q in queries])
    assert [prompt + q for q in queries] == [format_query(q, prompt[len("Instruct: "):-len("\nQuery: ")])
                                             for q in queries]
    want_d = e5jax_embed(model, tok, docs)
    np.testing.assert_allclose(got_q, want_q, atol=1e-5)
    np.testing.assert_allclose(got_d, want_d, atol=1e-5)
    # The last-token (EOS) state, not another pooling: transformers' own last hidden state agrees.
    enc = tok(docs, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = hf(**enc).last_hidden_state
    last = h[torch.arange(len(docs)), enc["attention_mask"].sum(-1) - 1]
    assert (enc["input_ids"][torch.arange(len(docs)), enc["attention_mask"].sum(-1) - 1] == tok.eos_token_id).all()
    np.testing.assert_allclose(torch.nn.functional.normalize(last, dim=-1).numpy(), want_d, atol=1e-5)


def test_peft_export_loads_on_the_base_model(tuned, tmp_path):
    import peft
    from safetensors.numpy import load_file
    from transformers import AutoModel

    base_dir, model, tok = tuned
    out = export_peft(model, tmp_path / "adapter", base_model=str(base_dir))
    conf = json.loads((out / "adapter_config.json").read_text())
    assert (conf["r"], conf["lora_alpha"], conf["peft_type"]) == (8, 16.0, "LORA")
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.layers.1.mlp.down_proj.lora_A.weight" in keys and len(keys) == 2 * 7 * 2

    base = AutoModel.from_pretrained(str(base_dir))
    tuned_pt = peft.PeftModel.from_pretrained(base, str(out)).eval()
    queries, docs = texts()
    batch = [query_prompt(INSTRUCTION) + q for q in queries] + docs
    enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        h = tuned_pt(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    last = h[torch.arange(len(batch)), enc["attention_mask"].sum(-1) - 1]
    got = torch.nn.functional.normalize(last, dim=-1).numpy()
    want = e5jax_embed(model, tok, batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with torch.no_grad(), tuned_pt.disable_adapter():  # the adapter is really applied: the bare base differs
        h0 = tuned_pt(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    assert (h0 - h).abs().max() > 1e-3
