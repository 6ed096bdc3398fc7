"""`e5jax export --workdir DIR --output DIR`: a checkpoint → transformers / sentence-transformers folder.

A decoder run (model.family=decoder: Llama / Mistral / Qwen) is written with its LoRA
adapters merged into the base weights, last-token pooling and the E5-mistral query prompt
`Instruct: TASK\\nQuery: ` (`--query-instruction TASK`; documents get no prompt).
`--peft` writes a LoRA run's adapters alone instead, as a PEFT adapter folder for the base
model the run started from (`peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), DIR)`).
"""

from __future__ import annotations

from e5jax.commands import add_query_instruction
from e5jax.errors import E5Error


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


def _refuse(args, *, decoder: bool, lora: bool) -> None:
    flag = "--peft" if args.peft else "--query-instruction"
    if not decoder:
        raise E5Error(f"{flag} is for decoder embedders (model.family=decoder); {args.workdir} is a BERT-family "
                      f"model: export it without {flag}")
    if args.peft and not lora:
        raise E5Error(f"--peft writes LoRA adapters; {args.workdir} has none (model.lora_rank = 0): "
                      "export the merged weights, without --peft")


def check_flags(args) -> str:
    """--peft / --query-instruction refused in one line where they do not apply, from the
    workdir's config.json (before the slow restore). Returns the run's base model folder
    (`model.init`, recorded in a PEFT adapter_config.json) or ""."""
    if args.peft and args.query_instruction:
        raise E5Error("--query-instruction sets the merged export's query prompt; a --peft adapter folder "
                      "has no prompts: give one of the two")
    if not (args.peft or args.query_instruction):
        return ""
    from e5jax.train.state import is_workdir, model_family, workdir_config

    if not is_workdir(args.workdir):
        return ""  # an exported folder: checked on the loaded model
    cfg = workdir_config(args.workdir)
    _refuse(args, decoder=model_family(cfg) == "decoder", lora=cfg.model.lora_rank > 0)
    return cfg.model.init


def run(args) -> int:
    from e5jax.api import export
    from e5jax.export import check_output

    check_output(args.output)  # before the (slow) restore
    base_model = check_flags(args)  # an export folder's flags are checked on the loaded model, by api.export
    out = export(args.workdir, args.output, step=args.step, max_seq_length=args.max_seq_length,
                 query_instruction=args.query_instruction, peft=args.peft, base_model=base_model or None)
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
