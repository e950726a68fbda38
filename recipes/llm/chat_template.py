"""Chat templates: a conversation rendered as transformers' ``apply_chat_template`` renders it, and its responses.

**Rendering.** A Hugging Face chat template is a Jinja2 program. It runs here as
transformers runs it (``transformers/utils/chat_template_utils.py``): an
``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks`` and the
``loopcontrols`` extension; a ``tojson`` filter that is plain ``json.dumps`` (Jinja's own
escapes HTML); the globals ``raise_exception``, ``strftime_now``, ``namespace`` (refusing
underscore names) and ``dict``; a ``{% generation %}`` block that renders its body; and
the variables ``messages``, ``add_generation_prompt``, ``tools`` and ``documents``
(``None``: a template testing ``tools is not none`` must see a real None) plus the
tokenizer's named special tokens (``bos_token``, ``eos_token``, ``unk_token``,
``sep_token``, ``pad_token``, ``cls_token``, ``mask_token``) from ``tokenizer_config.json``.
Messages are normalised as transformers does: keys whose value is null are dropped, and
a message's reasoning (``reasoning_content``, ``thinking`` or ``reasoning``) is offered
under both ``reasoning_content`` and ``thinking``.

**Where the template comes from**, in a tokenizer folder, first found:
``chat_template.jinja`` (what transformers 5 writes), then ``tokenizer_config.json``'s
``chat_template`` (a string, or a list of ``{name, template}`` of which ``default`` is
taken), then :func:`default_template`: ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``,
the generation prompt ``<|im_start|>assistant\\n``), each turn ended by ``<|im_end|>`` when
the tokenizer has that token, else by its ``eos_token``.

**Responses** are found by rendering prefixes (no ``{% generation %}`` markup needed):
for each assistant message ``i``, ``render(messages[:i], add_generation_prompt=True)``
must be the start of ``render(messages[:i + 1])``, which must be the start of the whole
rendering; the characters between the first two are the response: its content and
whatever the template writes after it (the end-of-turn token, so the model learns to
stop). The whole rendering is tokenised once, without adding special tokens (as
``apply_chat_template`` does), and a token is a response token when its characters
overlap a response (transformers' ``return_assistant_tokens_mask`` rule). A template
that renders an earlier turn differently once later turns follow (Qwen3 and DeepSeek-R1
drop earlier reasoning) cannot be split this way: :class:`ChatTemplateError` names the
template and the message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jevons.framework.data.importing import Skipped
from jevons.framework.errors import UsageError
from jevons.recipes.llm.hf_config import read_json_object

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
LEGACY_SPECIAL_TOKENS_FILE = "special_tokens_map.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""The named special tokens a template sees (transformers' ``SPECIAL_TOKENS_ATTRIBUTES``)."""
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
"""Names a message's reasoning comes under; templates read the first two."""

Message = dict[str, Any]


class ChatTemplateError(UsageError):
    """A chat template that cannot be used: it does not compile, or its responses cannot be found by rendering
    prefixes. The message names the template's source."""


@dataclass(frozen=True)
class ChatTemplate:
    """A tokenizer folder's chat template and the special tokens it is rendered with."""

    text: str
    source: str
    """Where it came from: ``chat_template.jinja``, ``tokenizer_config.json`` or the built-in default."""
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return render(self.text, messages, add_generation_prompt, **self.special_tokens)


def render(template: str, messages: Sequence[Message], add_generation_prompt: bool = False, **variables: Any) -> str:
    """``messages`` rendered with ``template`` as ``apply_chat_template(..., tokenize=False)`` renders them;
    ``variables`` (the special tokens) come first, so the conversation's own names win."""
    compiled = compile_template(template)
    return compiled.render(
        **variables,
        messages=[_normalized(message) for message in messages],
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
    )


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """The Jinja2 template, compiled once per text (see the module docstring for its environment)."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace, dict=_DictMaker()
    )
    return environment.from_string(template)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """``json.dumps`` with its options; unlike Jinja's filter, ``<``, ``>`` and ``&`` are left as they are."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's ``namespace``, refusing attributes that start with an underscore (a way into CPython's internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature, so that ``namespace(self=...)`` works
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _Namespace.check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace.check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"A chat template may not set the underscore attribute {name!r} on a namespace."
            )


class _DictMaker:
    """``dict(...)`` and ``dict.fromkeys(...)`` in a template, without the ``dict`` type's other attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``, with which transformers marks assistant text: its body, rendered.
    Responses are found here by rendering prefixes, so the marks are not needed."""

    tags = {"generation"}  # noqa: RUF012 (Jinja's own class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _normalized(message: Message) -> Message:
    """A message as transformers gives it to a template: null values dropped, reasoning under both names."""
    kept = {key: value for key, value in message.items() if value is not None}
    reasoning = next((kept[key] for key in REASONING_FIELDS if key in kept), None)
    if reasoning is not None:
        kept = {"thinking": reasoning, **kept, "reasoning_content": reasoning}
    return kept


def special_tokens(folder: Path) -> dict[str, str]:
    """The named special tokens of a tokenizer folder: ``tokenizer_config.json``'s (a string, or an AddedToken's
    ``content``), and where that file has no ``added_tokens_decoder``, the older ``special_tokens_map.json``'s
    over them (transformers' order)."""
    config = _read_json(folder / CONFIG_FILE)
    found = {name: config[name] for name in SPECIAL_TOKEN_NAMES if config.get(name) is not None}
    if "added_tokens_decoder" not in config and (folder / LEGACY_SPECIAL_TOKENS_FILE).exists():
        legacy = _read_json(folder / LEGACY_SPECIAL_TOKENS_FILE)
        found.update({name: legacy[name] for name in SPECIAL_TOKEN_NAMES if legacy.get(name) is not None})
    tokens = {}
    for name, value in found.items():
        text = value.get("content") if isinstance(value, dict) else value
        if not isinstance(text, str):
            raise UsageError(f"{folder / CONFIG_FILE}: {name} is {value!r}; expected a token (a string).")
        tokens[name] = text
    return tokens


def default_template(end_of_turn: str) -> str:
    """ChatML, each turn ended by ``end_of_turn``: the template of a folder that has none."""
    end = json.dumps(end_of_turn)  # a Jinja string literal
    return (
        "{% for message in messages %}"
        f"{{{{ '{CHATML_START}' + message['role'] + '\\n' + message['content'] + {end} + '\\n' }}}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ '{CHATML_START}assistant\\n' }}}}{{% endif %}}"
    )


def read_chat_template(folder: Path, has_token: Callable[[str], bool]) -> ChatTemplate:
    """The chat template of a Hugging Face tokenizer folder (the order in the module docstring), compiled to
    check it; ``has_token`` says whether the tokenizer has a token (for the default template's end of turn)."""
    tokens = special_tokens(folder)
    config = _read_json(folder / CONFIG_FILE)
    if (folder / TEMPLATE_FILE).is_file():
        text, source = (folder / TEMPLATE_FILE).read_text(encoding="utf-8"), TEMPLATE_FILE
    elif isinstance(config.get("chat_template"), str):
        text, source = config["chat_template"], CONFIG_FILE
    elif isinstance(config.get("chat_template"), list):
        named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, dict)}
        if not isinstance(named.get("default"), str):
            raise ChatTemplateError(
                f"{folder / CONFIG_FILE} has chat templates named {sorted(map(str, named))} but none named 'default': "
                f"write the one to train with into {folder / TEMPLATE_FILE}."
            )
        text, source = str(named["default"]), f"{CONFIG_FILE} ('default' of {len(named)})"
    elif config.get("chat_template") is not None:
        found = type(config["chat_template"]).__name__
        raise ChatTemplateError(
            f"{folder / CONFIG_FILE}: chat_template is a {found}; expected a string or a list of {{name, template}}."
        )
    else:
        end = CHATML_END if has_token(CHATML_END) else tokens.get("eos_token")
        if end is None:
            raise ChatTemplateError(
                f"{folder} has no chat template ({TEMPLATE_FILE}, or chat_template in {CONFIG_FILE}), and the "
                f"built-in ChatML default needs {CHATML_END} or an eos_token to end turns with; neither is there. "
                f"Write the model's template into {folder / TEMPLATE_FILE}."
            )
        text, source = default_template(end), f"built-in default (ChatML, turns ended by {end})"
    template = ChatTemplate(text, source, tokens)
    try:
        compile_template(text)
    except Exception as error:  # jinja2.TemplateSyntaxError, and a SecurityError of a sandboxed constant
        raise ChatTemplateError(f"The chat template of {folder} ({source}) does not compile: {error}") from None
    return template


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.exists() else {}


def response_spans(template: ChatTemplate, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's rendering and its responses' ``(start, end)`` character spans, one per assistant
    message (see the module docstring). Raises :class:`ChatTemplateError` where prefixes do not nest, and
    jinja2's ``TemplateError`` where the template refuses the conversation (``raise_exception``)."""
    whole = template.render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        through = whole if i == len(messages) - 1 else template.render(messages[: i + 1])
        if not through.startswith(before):
            raise ChatTemplateError(
                f"The chat template ({template.source}) cannot mark the response of message {i} (assistant): the "
                f"conversation before it, rendered with add_generation_prompt=True, is not the start of the "
                f"conversation through it ({_difference(before, through)}). Use a template whose generation prompt "
                f"is how it starts an assistant turn."
            )
        if not whole.startswith(through):
            raise ChatTemplateError(
                f"The chat template ({template.source}) renders message {i} (assistant) differently once later "
                f"messages follow ({_difference(through, whole)}): it rewrites earlier turns (as Qwen3's and "
                f"DeepSeek-R1's drop earlier reasoning), so responses cannot be found by rendering prefixes. Use a "
                f"template that renders each turn the same whatever follows, or end each conversation at that turn."
            )
        spans.append((len(before), len(through)))
    return whole, spans


def _difference(shorter: str, longer: str) -> str:
    """Where two renderings part: the first differing character, with some context, as Python literals."""
    at = next((k for k, (a, b) in enumerate(zip(shorter, longer)) if a != b), min(len(shorter), len(longer)))
    return f"at character {at}: {shorter[max(0, at - 20) : at + 20]!r} against {longer[max(0, at - 20) : at + 20]!r}"


def tokenize_conversation(
    template: ChatTemplate, tokenizer: Any, messages: Sequence[Message]
) -> tuple[list[int], list[int]]:
    """The conversation's token ids (``tokenizer``, a ``tokenizers.Tokenizer``, on the rendering, no special
    tokens added) and its mask: 1 for each token overlapping a response span, else 0."""
    text, spans = response_spans(template, messages)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    mask = [0] * len(encoding.ids)
    span = 0
    for position, (start, end) in enumerate(encoding.offsets):  # both in order: one pass
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[position] = 1
    return list(encoding.ids), mask


@dataclass(frozen=True)
class ChatFields:
    """Which fields of a row hold a conversation (the import's ``*_field`` options)."""

    messages: str = "messages"
    prompt: str = "prompt"
    response: str = "response"
    system: str = "system"


def conversation(row: Mapping[str, Any], fields: ChatFields) -> list[Message]:
    """A row's conversation: its ``messages`` list of role/content messages, or a ``prompt`` and ``response``
    (a user and an assistant message, after a ``system`` message if that field is a non-empty string).
    Raises :class:`~jevons.framework.data.importing.Skipped`: ``missing field``, ``undecodable`` (not a list of
    messages, a message without a string role or content, one that starts with the assistant) or
    ``no response`` (no assistant message with content)."""
    if row.get(fields.messages) is not None:
        messages = _messages(row[fields.messages], fields.messages)
    elif row.get(fields.prompt) is not None:
        messages = _pair(row, fields)
    else:
        raise Skipped(
            "missing field",
            f"no '{fields.messages}', nor '{fields.prompt}' and '{fields.response}', in {sorted(row)[:8]}",
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        roles = [m["role"] for m in messages]
        raise Skipped("no response", f"no assistant message with content (roles {roles[:8]})")
    if messages[0]["role"] == "assistant":
        raise Skipped("undecodable", "the conversation starts with an assistant message: nothing prompts it")
    return messages


def _messages(value: Any, name: str) -> list[Message]:
    if not isinstance(value, list):
        raise Skipped("undecodable", f"'{name}' is a {type(value).__name__}, not a list of messages")
    messages = []
    for number, message in enumerate(value):
        if not isinstance(message, dict):
            raise Skipped("undecodable", f"{name}[{number}] is a {type(message).__name__}, not a role/content object")
        kept = {key: item for key, item in message.items() if item is not None}
        for key in ("role", "content"):
            if not isinstance(kept.get(key), str):
                found = "missing" if key not in kept else f"a {type(kept[key]).__name__}"
                hint = " (ShareGPT's from/value: rename them role/content)" if "from" in kept else ""
                raise Skipped("undecodable", f"{name}[{number}]'s '{key}' is {found}, not text{hint}")
        messages.append(kept)
    return messages


def _pair(row: Mapping[str, Any], fields: ChatFields) -> list[Message]:
    prompt, response, system = row.get(fields.prompt), row.get(fields.response), row.get(fields.system)
    for name, value in ((fields.prompt, prompt), (fields.response, response), (fields.system, system)):
        if value is not None and not isinstance(value, str):
            raise Skipped("undecodable", f"'{name}' is a {type(value).__name__}, not text")
    if response is None or not response.strip():
        raise Skipped("no response", f"'{fields.response}' is {'missing' if response is None else 'empty'}")
    system_message = [{"role": "system", "content": system}] if system else []
    return [*system_message, {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
