"""A tiny Hugging Face tokenizer folder with a chat template: what tests and toy checkpoints tokenise with.

:func:`write_tokenizer_folder` trains a byte-level BPE (GPT-2's pre-tokenisation) of a
few hundred tokens with ``tokenizers``, adds a chat format's special tokens, wraps it in
``transformers.PreTrainedTokenizerFast`` with its bos/eos/pad tokens and chat template,
and writes it with ``save_pretrained``: ``tokenizer.json``, ``tokenizer_config.json`` and
(transformers 5) ``chat_template.jinja``, the files a released model's folder has.

Two formats, as their models ship them:

* :data:`LLAMA3_STYLE_TEMPLATE`, Meta Llama 3 Instruct's template (``<|begin_of_text|>``
  once, then ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`` per turn,
  content trimmed), with :data:`LLAMA3_TOKENS`: eos ``<|eot_id|>`` (the instruct models'),
  pad ``<|end_of_text|>``, and a post-processor that adds bos, as Llama 3's tokenizer.json
  does (so a tokenisation that adds special tokens to a rendered chat doubles it);
* :data:`CHATML_TEMPLATE`, Qwen2 Instruct's ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``,
  "You are a helpful assistant." as the system message of a conversation without one),
  with :data:`CHATML_TOKENS`: no bos, eos ``<|im_end|>``, pad ``<|endoftext|>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLAMA3_STYLE_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""Meta-Llama-3-8B-Instruct's chat template, as released."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Qwen2-Instruct's chat template (ChatML with a default system message), as released."""


@dataclass(frozen=True)
class SpecialTokens:
    """A chat format's special tokens, in id order (they take the first ids), and which are bos, eos and pad."""

    tokens: tuple[str, ...]
    eos_token: str
    pad_token: str
    bos_token: str | None = None


LLAMA3_TOKENS = SpecialTokens(
    ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    eos_token="<|eot_id|>",
    pad_token="<|end_of_text|>",
    bos_token="<|begin_of_text|>",
)
CHATML_TOKENS = SpecialTokens(
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), eos_token="<|im_end|>", pad_token="<|endoftext|>"
)


def write_tokenizer_folder(
    out: Path,
    texts: Iterable[str],
    vocab_size: int = 384,
    chat_template: str | None = LLAMA3_STYLE_TEMPLATE,
    special_tokens: SpecialTokens | None = None,
) -> Any:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and write its Hugging Face folder to ``out``;
    returns the ``PreTrainedTokenizerFast`` written (``len(tokenizer)``, ``tokenizer.eos_token_id``...).

    ``special_tokens`` null takes the template's: :data:`CHATML_TOKENS` for a template with ``<|im_start|>``,
    else :data:`LLAMA3_TOKENS`. ``chat_template`` null writes a folder without one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if special_tokens is None:
        chatml = chat_template is not None and "<|im_start|>" in chat_template
        special_tokens = CHATML_TOKENS if chatml else LLAMA3_TOKENS
    if vocab_size < 256 + len(special_tokens.tokens):
        raise ValueError(f"vocab_size={vocab_size}: at least 256 bytes and {len(special_tokens.tokens)} special tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens.tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    byte_level = processors.ByteLevel(trim_offsets=False)
    bos = special_tokens.bos_token
    if bos is not None:  # as Llama 3: encode(text) starts with bos unless add_special_tokens=False
        bos_id = tokenizer.token_to_id(bos)
        adds_bos = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
        tokenizer.post_processor = processors.Sequence([byte_level, adds_bos])
    else:
        tokenizer.post_processor = byte_level
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=special_tokens.eos_token,
        pad_token=special_tokens.pad_token,
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    Path(out).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    return wrapped
