"""Export a nanochat checkpoint as a Hugging Face `transformers` model folder: `nanochat export hf`.

The folder loads with `AutoModelForCausalLM.from_pretrained` (transformers' own `NanoChatForCausalLM`) and
`AutoTokenizer.from_pretrained`, with no custom code:
- `config.json`: `NanoChatConfig` from the checkpoint's model_config: rotary base 10000, QK-norm and the
  parameter-free RMSNorm (eps = fp32 machine epsilon, as `F.rms_norm` uses), relu² MLP of 4x width,
  GQA heads, untied head (`tie_word_embeddings: false`), logit softcap 15;
- `model.safetensors`: the weights under transformers' names (`transformer.h.0.attn.c_q` ->
  `model.layers.0.self_attn.q_proj`, ...). Both implementations rotate the halves of each head the same way,
  so the weights are copied unchanged;
- `tokenizer.json`: a byte-level BPE built from the tiktoken ranks (every way to split a token into two
  vocabulary tokens becomes a merge ranked by the token's rank, and whole-word lookups come first, which is
  what tiktoken does), the split regex and the 9 special tokens at their ids;
- `chat_template.jinja` (in tokenizer_config.json): nanochat's chat format, system message merged into
  the first user message, with `{% generation %}` marks so `return_assistant_tokens_mask=True` gives the
  same training mask as `Tokenizer.render_conversation`;
- `generation_config.json`: generation stops at <|assistant_end|> or <|bos|>, as the engine does.

One known difference: nanochat rounds the rotary cos/sin tables to bf16, transformers keeps them in fp32,
so logits agree to about 1e-2, not bit for bit (`verify_export` measures it).
It deliberately does not upload anything: push the folder with `huggingface-cli upload` if you want.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nanochat.checkpoint import load_checkpoint
from nanochat.gpt import GPT, LOGIT_SOFTCAP, ROTARY_BASE
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer

LOGITS_TOLERANCE = 5e-2  # max |logit difference| accepted by verify_export (logits are capped at ±15)
VERIFY_TEXT = "The quick brown fox jumps over the lazy dog. 12345 café"
PAD_TOKEN = "<|assistant_end|>"

CHAT_TEMPLATE = """\
{%- if messages and messages[0]['role'] == 'system' -%}
{%- if messages | length < 2 or messages[1]['role'] != 'user' -%}
{{- raise_exception('message 0 is a system message; it must be followed by a user message') -}}
{%- endif -%}
{%- set merged = messages[0]['content'] ~ '\\n\\n' ~ messages[1]['content'] -%}
{%- set loop_messages = [{'role': 'user', 'content': merged}] + messages[2:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for message in loop_messages -%}
{%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
{%- if message['role'] != expected -%}
{{- raise_exception('roles must alternate user/assistant, starting with user; system only first') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{{- '<|user_start|>' ~ message['content'] ~ '<|user_end|>' -}}
{%- else -%}
{{- '<|assistant_start|>' -}}
{%- if message['content'] is string -%}
{%- generation -%}{{- message['content'] ~ '<|assistant_end|>' -}}{%- endgeneration -%}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' -%}
{%- generation -%}{{- part['text'] -}}{%- endgeneration -%}
{%- elif part['type'] == 'python' -%}
{%- generation -%}{{- '<|python_start|>' ~ part['text'] ~ '<|python_end|>' -}}{%- endgeneration -%}
{%- elif part['type'] == 'python_output' -%}
{{- '<|output_start|>' ~ part['text'] ~ '<|output_end|>' -}}
{%- else -%}
{{- raise_exception('unknown assistant part type: ' ~ part['type']) -}}
{%- endif -%}
{%- endfor -%}
{%- generation -%}{{- '<|assistant_end|>' -}}{%- endgeneration -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}
"""


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that does not match the original."""


# ---- config and weights ---------------------------------------------------------------------------
def hf_config(model: GPT, tokenizer: Tokenizer):
    """The `NanoChatConfig` equivalent to a nanochat model."""
    from transformers import NanoChatConfig

    c = model.config
    special = tokenizer.get_special_tokens()
    return NanoChatConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=4 * c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.sequence_len,
        hidden_act="relu2",
        rms_norm_eps=torch.finfo(torch.float32).eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(ROTARY_BASE)},
        final_logit_softcapping=LOGIT_SOFTCAP,
        attention_bias=False,
        tie_word_embeddings=False,
        bos_token_id=special["<|bos|>"],
        eos_token_id=[special["<|assistant_end|>"], special["<|bos|>"]],
        pad_token_id=None,  # nanochat has no padding token; an embedding padding_idx would freeze a row
    )


def hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanochat parameter names -> transformers' NanoChatForCausalLM names (tensors unchanged)."""
    renames = {
        "attn.c_q": "self_attn.q_proj",
        "attn.c_k": "self_attn.k_proj",
        "attn.c_v": "self_attn.v_proj",
        "attn.c_proj": "self_attn.o_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out = {}
    for name, tensor in state_dict.items():
        if name == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "lm_head.weight":
            out[name] = tensor
        elif name.startswith("transformer.h."):
            _, _, layer, rest = name.split(".", 3)
            module, suffix = rest.rsplit(".", 1)
            if module not in renames:
                raise ExportError(f"unexpected parameter {name}")
            out[f"model.layers.{layer}.{renames[module]}.{suffix}"] = tensor
        else:
            raise ExportError(f"unexpected parameter {name}")
    return out


# ---- tokenizer ------------------------------------------------------------------------------------
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what the ByteLevel pre-tokenizer uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def hf_tokenizer(tokenizer: Tokenizer, split_pattern: str | None = None):
    """A `PreTrainedTokenizerFast` that encodes plain text to the same ids as `tokenizer`."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    special = tokenizer.get_special_tokens()
    special_ids = set(special.values())
    to_char = byte_to_unicode()
    ranks: dict[bytes, int] = {}
    for token_id in range(tokenizer.vocab_size):
        if token_id not in special_ids:
            ranks[tokenizer.id_to_token_bytes(token_id)] = token_id
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ExportError("the special tokens are not the last ids of the vocabulary; cannot export")
    vocab = {"".join(to_char[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append(("".join(to_char[b] for b in left), "".join(to_char[b] for b in right)))
    vocab.update(special)
    backend = RustTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern or _split_pattern(tokenizer)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|assistant_end|>",
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|bos|>", "<|assistant_end|>")],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def _split_pattern(tokenizer: Tokenizer) -> str:
    """The regex the tiktoken encoding splits text with (nanochat's SPLIT_PATTERN unless trained so)."""
    encoding = getattr(tokenizer, "_encoding", None)
    return getattr(encoding, "_pat_str", None) or SPLIT_PATTERN


# ---- export ---------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    out_dir: Path
    max_logit_diff: float | None  # None when not verified
    num_parameters: int


def export_hf(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    step: int | None = None,
    verify: bool = True,
) -> ExportResult:
    """Write the transformers folder for a nanochat checkpoint; with `verify`, load it back and compare."""
    from transformers import GenerationConfig, NanoChatForCausalLM

    loaded = load_checkpoint(checkpoint, step=step, dtype=torch.float32)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new folder")
    config = hf_config(loaded.model, loaded.tokenizer)
    hf_model = NanoChatForCausalLM(config)
    hf_model.load_state_dict(hf_state_dict(loaded.model.state_dict()), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.eos_token_id[0],
    )
    hf_model.save_pretrained(out)
    hf_tokenizer(loaded.tokenizer).save_pretrained(out)
    source = {
        "checkpoint": str(checkpoint),
        "step": loaded.step,
        "model_config": loaded.model.config.to_dict(),
    }
    (out / "nanochat_export.json").write_text(json.dumps(source, indent=2) + "\n")
    diff = verify_export(loaded.model, loaded.tokenizer, out) if verify else None
    return ExportResult(out, diff, loaded.model.num_parameters())


@torch.inference_mode()
def verify_export(model: GPT, tokenizer: Tokenizer, out_dir: str | os.PathLike[str]) -> float:
    """Load the export with the Auto classes; check token ids and logits against the nanochat model.

    Returns the largest absolute logit difference; raises ExportError above LOGITS_TOLERANCE."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tokenizer.encode(VERIFY_TEXT, prepend=tokenizer.get_bos_token_id())
    hf_ids = [tokenizer.get_bos_token_id(), *hf_tok(VERIFY_TEXT, add_special_tokens=False)["input_ids"]]
    if hf_ids != ids:
        raise ExportError(f"the exported tokenizer encodes {VERIFY_TEXT!r} as {hf_ids}, nanochat as {ids}")
    hf_model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    idx = torch.tensor([ids[: model.config.sequence_len]])
    ours = model.float().eval()(idx)
    theirs = hf_model(idx).logits
    diff = float((ours - theirs).abs().max())
    if diff > LOGITS_TOLERANCE:
        raise ExportError(
            f"exported logits differ by {diff:.3g} (tolerance {LOGITS_TOLERANCE}): the export is wrong"
        )
    return diff


# ---- command line ---------------------------------------------------------------------------------
def register(subparsers: Any) -> argparse.ArgumentParser:
    export = subparsers.add_parser("export", help="export a checkpoint to another format")
    formats = export.add_subparsers(dest="export_format", required=True, parser_class=type(export))
    hf = formats.add_parser(
        "hf", help="a Hugging Face transformers folder (AutoModelForCausalLM/AutoTokenizer)"
    )
    hf.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="nanochat checkpoint folder or repo id"
    )
    hf.add_argument("--out", required=True, metavar="DIR", help="new folder for the transformers files")
    hf.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    hf.add_argument("--no-verify", action="store_true", help="skip loading the export back to compare logits")
    hf.set_defaults(handler=cmd_export_hf)
    return export


def cmd_export_hf(args: argparse.Namespace) -> int:
    result = export_hf(args.checkpoint, args.out, args.step, verify=not args.no_verify)
    check = "" if result.max_logit_diff is None else f", max logit difference {result.max_logit_diff:.2e}"
    print(f"export hf: {result.num_parameters:,} parameters{check} -> {result.out_dir}")
    return 0
