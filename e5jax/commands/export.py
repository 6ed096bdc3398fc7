"""`e5jax export --workdir DIR --output DIR`: a checkpoint → transformers / sentence-transformers folder.

A decoder run (model.family=decoder: Llama / Mistral / Qwen) is written with its LoRA
adapters merged into the base weights, last-token pooling and the E5-mistral query prompt
`Instruct: TASK\\nQuery: ` (`--query-instruction TASK`; documents get no prompt).
`--peft` writes a LoRA run's adapters alone instead, as a PEFT adapter folder for the base
model the run started from (`peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), DIR)`).
"""

from __future__ import annotations

from e5jax.commands import add_query_instruction


def add_arguments(p):
    p.add_argument("--workdir", required=True, help="training workdir (its newest checkpoint is exported)")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--step", type=int, default=None, help="export this step instead of the newest")
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--peft", action="store_true",
                   help="decoder runs with LoRA (model.lora_rank > 0): write the adapters alone as a PEFT folder "
                        "(adapter_config.json + adapter_model.safetensors) for the base model, not merged weights")
    add_query_instruction(p, help='decoder runs: the task in the merged export\'s sentence-transformers query '
                                  'prompt "Instruct: TASK\\nQuery: " (default: a web-search task)')


def run(args) -> int:
    from e5jax.api import export_model

    out, base_model = export_model(args.workdir, args.output, step=args.step, max_seq_length=args.max_seq_length,
                                   query_instruction=args.query_instruction, peft=args.peft,
                                   names=("--peft", "--query-instruction"))
    if args.peft:
        print(f"exported the LoRA adapters to {out}")
        print("load them with:\n" + peft_snippet(out, base_model))
        return 0
    print(f"exported to {out}")
    print("load it with:\n" + load_snippet(out))
    return 0


def load_snippet(path) -> str:
    return (f"from sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer({str(path)!r})\n"
            f"emb = model.encode(['how to resize a partition'], prompt_name='query')")


def peft_snippet(path, base_model: str) -> str:
    return (f"from peft import PeftModel\nfrom transformers import AutoModel\n"
            f"model = PeftModel.from_pretrained(AutoModel.from_pretrained({base_model or 'BASE_MODEL'!r}), "
            f"{str(path)!r})")
