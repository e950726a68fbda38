"""``jevons data import chat``: conversations rendered and tokenised exactly as transformers' ``apply_chat_template``
does, for Meta Llama 3's and Qwen2's templates, the response mask decoded back to the assistant's words, and the
command end to end with every bad row counted and every hopeless import refused before it writes anything."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jevons.framework.data.importing.engine import run_import
from jevons.framework.data.reader import ShardDataset
from jevons.framework.data.shards import decode_npy, read_index
from jevons.recipes.llm.chat_importer import ChatImporter, ChatImportOptions
from jevons.recipes.llm.chat_template import (
    ChatFields,
    ChatTemplate,
    ChatTemplateError,
    conversation,
    read_chat_template,
    render,
    response_spans,
    tokenize_conversation,
)
from jevons.recipes.llm.tiny_tokenizer import CHATML_TEMPLATE, LLAMA3_STYLE_TEMPLATE, write_tokenizer_folder

CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "What does json.dumps return?"},
        {"role": "assistant", "content": "A str holding the JSON text."},
    ],
    [  # no system message: Qwen2's template adds its own
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "  Seven.\n"},  # Llama 3's template trims content; ChatML keeps it
        {"role": "user", "content": "And an even one, café?"},
        {"role": "assistant", "content": "Two — the only one."},
    ],
    [  # a trailing user turn is context, not learned
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Thanks!"},
    ],
]
END_OF_TURN = {"llama3": ("<|eot_id|>", True), "chatml": ("<|im_end|>\n", False)}
"""What follows an assistant's content in each template, and whether the template trims the content."""


def _texts() -> list[str]:
    import argparse
    import textwrap

    words = [m["content"] for c in CONVERSATIONS for m in c]
    return [*words, json.__doc__ or "", textwrap.__doc__ or "", argparse.__doc__ or ""]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenizer folders as transformers writes them: a Llama-3-style and a Qwen2 ChatML one."""
    root = tmp_path_factory.mktemp("tokenizers")
    written = {}
    for name, template in (("llama3", LLAMA3_STYLE_TEMPLATE), ("chatml", CHATML_TEMPLATE)):
        write_tokenizer_folder(root / name, _texts(), chat_template=template)
        written[name] = root / name
    return written


def _raw_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _template(folder: Path) -> ChatTemplate:
    tokenizer = _raw_tokenizer(folder)
    return read_chat_template(folder, lambda token: tokenizer.token_to_id(token) is not None)


@functools.cache
def _hf_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _hf_ids(folder: Path, messages: list[dict[str, str]]) -> list[int]:
    encoded = _hf_tokenizer(folder).apply_chat_template(messages, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)  # transformers 5: a BatchEncoding


def _masked_runs(tokenizer: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The masked tokens, decoded run by run."""
    runs: list[list[int]] = []
    for position, (token, masked) in enumerate(zip(ids, mask)):
        if masked:
            if position == 0 or not mask[position - 1]:
                runs.append([])
            runs[-1].append(token)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def _expected_responses(name: str, messages: list[dict[str, str]]) -> list[str]:
    end, trims = END_OF_TURN[name]
    return [(m["content"].strip() if trims else m["content"]) + end for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_tokens_equal_apply_chat_template_and_mask_decodes_to_the_responses(
    folders: dict[str, Path], name: str
) -> None:
    template, tokenizer = _template(folders[name]), _raw_tokenizer(folders[name])
    assert template.source == "chat_template.jinja"
    for messages in CONVERSATIONS:
        ids, mask = tokenize_conversation(template, tokenizer, messages)
        assert ids == _hf_ids(folders[name], messages)
        assert _masked_runs(tokenizer, ids, mask) == _expected_responses(name, messages)
    if name == "llama3":  # one bos: the post-processor's is not added to the rendering's own
        assert ids.count(tokenizer.token_to_id("<|begin_of_text|>")) == 1 and ids[0] == 0
    else:  # Qwen2's default system message opens the conversation that has none
        text, _ = response_spans(template, CONVERSATIONS[1])
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_mask_agrees_with_transformers_generation_marks(folders: dict[str, Path], tmp_path: Path) -> None:
    """A ChatML template with ``{% generation %}`` around each response and its end of turn: transformers'
    ``return_assistant_tokens_mask`` marks exactly the tokens the prefix renderings find."""
    from transformers import AutoTokenizer

    marked = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>\\n' }}"
        "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    folder = tmp_path / "marked"
    shutil.copytree(folders["chatml"], folder)
    (folder / "chat_template.jinja").write_text(marked)
    hf = AutoTokenizer.from_pretrained(folder)
    template, tokenizer = _template(folder), _raw_tokenizer(folder)
    for messages in CONVERSATIONS:
        ids, mask = tokenize_conversation(template, tokenizer, messages)
        reference = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids == list(reference["input_ids"])
        assert mask == list(reference["assistant_masks"])
        assert sum(mask) > 0


def test_rendering_matches_transformers_on_template_features() -> None:
    """tojson without HTML escapes, namespace, loop controls, ``tools is none``, special tokens, null keys dropped,
    reasoning under both names, and the generation prompt."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template = (
        "{{ bos_token }}{% set ns = namespace(users=0) %}{% if tools is not none %}TOOLS{% endif %}"
        "{% for m in messages %}{% if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}"
        "{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "[{{ m.role }}|{{ m | tojson }}|{{ m.thinking is defined }}|{{ m.get('name', '-') }}]\n"
        "  {% if loop.last %}{{ ns.users }} users{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<go>{% endif %}"
    )
    messages = [
        {"role": "user", "content": "<b>a & b</b> é", "name": None},
        {"role": "skip", "content": "hidden"},
        {"role": "assistant", "content": "ok", "reasoning": "because"},
    ]
    for prompt in (False, True):
        ours = render(template, messages, prompt, bos_token="<s>", eos_token="</s>")
        normalized = [
            {key: value for key, value in m.items() if value is not None} for m in messages
        ]  # as apply_chat_template
        theirs = render_jinja_template(
            [normalized], chat_template=template, add_generation_prompt=prompt, bos_token="<s>", eos_token="</s>"
        )[0][0]
        assert ours == theirs
    assert '"<b>a & b</b> é"' in ours and "TOOLS" not in ours and "hidden" not in ours
    assert "1 users" in ours and ours.endswith("<go>") and ours.startswith("<s>[user|")


def test_template_sources_in_order(folders: dict[str, Path], tmp_path: Path) -> None:
    """chat_template.jinja, else tokenizer_config.json's string or 'default' of a list, else ChatML ended by
    <|im_end|> when the tokenizer has it, else by its eos_token; the config-held ones tokenise as transformers."""
    messages = CONVERSATIONS[0]
    for layout in ("string", "list"):
        folder = tmp_path / layout
        shutil.copytree(folders["chatml"], folder)
        (folder / "chat_template.jinja").unlink()
        config = json.loads((folder / "tokenizer_config.json").read_text())
        other = {"name": "tool_use", "template": "{{ raise_exception('not this one') }}"}
        given = {"name": "default", "template": CHATML_TEMPLATE}
        config["chat_template"] = CHATML_TEMPLATE if layout == "string" else [other, given]
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        template = _template(folder)
        assert template.source == (
            "tokenizer_config.json" if layout == "string" else "tokenizer_config.json ('default' of 2)"
        )
        assert tokenize_conversation(template, _raw_tokenizer(folder), messages)[0] == _hf_ids(folder, messages)
    for name, end in (("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")):  # llama3: no <|im_end|>, eos is <|eot_id|>
        folder = tmp_path / f"bare-{name}"
        shutil.copytree(folders[name], folder)
        (folder / "chat_template.jinja").unlink()
        template = _template(folder)
        assert template.source == f"built-in default (ChatML, turns ended by {end})"
        text, spans = response_spans(template, messages)
        assert text == (
            f"<|im_start|>system\nYou answer in one sentence.{end}\n<|im_start|>user\nWhat does json.dumps return?"
            f"{end}\n<|im_start|>assistant\nA str holding the JSON text.{end}\n"
        )
        assert [text[a:b] for a, b in spans] == [f"A str holding the JSON text.{end}\n"]


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_it() -> None:
    """As Qwen3's drops earlier reasoning: an assistant turn rendered differently once another follows."""
    drops_earlier = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<a>(earlier)</a>"
        "{% else %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}",
        "the test's template",
    )
    with pytest.raises(
        ChatTemplateError, match=r"\(the test's template\) renders message 1 \(assistant\) differently once later"
    ):
        response_spans(drops_earlier, CONVERSATIONS[1])
    prompt_differs = ChatTemplate(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}",
        "another",
    )
    with pytest.raises(ChatTemplateError, match=r"\(another\) cannot mark the response of message 2"):
        response_spans(prompt_differs, CONVERSATIONS[0])


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_prompt_response_rows_tokenise_as_the_same_messages(folders: dict[str, Path], name: str) -> None:
    template, tokenizer = _template(folders[name]), _raw_tokenizer(folders[name])
    fields = ChatFields()
    pair = {"system": "You answer in one sentence.", "prompt": "What does json.dumps return?", "response": "A str."}
    messages = [
        {"role": "system", "content": pair["system"]},
        {"role": "user", "content": pair["prompt"]},
        {"role": "assistant", "content": pair["response"]},
    ]
    for row, same in (
        (pair, messages),
        ({**pair, "system": None}, messages[1:]),
        ({**pair, "system": ""}, messages[1:]),
    ):
        assert conversation(row, fields) == same
        assert tokenize_conversation(template, tokenizer, conversation(row, fields)) == tokenize_conversation(
            template, tokenizer, same
        )
    renamed = ChatFields(prompt="instruction", response="output", system="context")
    assert conversation({"instruction": "q", "output": "a"}, renamed) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def _good_rows(count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(count):
        if i % 3 == 0:
            rows.append({"prompt": f"What is {i} plus {i}?", "response": f"{2 * i}."})
        elif i % 3 == 1:
            rows.append({"system": "Be terse.", "prompt": f"Spell {i}.", "response": f"It is written {i}."})
        else:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"Count to {i % 5 + 1}."},
                        {"role": "assistant", "content": " ".join(str(k) for k in range(1, i % 5 + 2))},
                        {"role": "user", "content": f"Again, backwards, for request {i}?"},
                        {"role": "assistant", "content": f"Backwards from {i % 5 + 1}, done."},
                    ]
                }
            )
    return rows


def _run_cli(*arguments: str) -> int:
    from jevons.framework.cli.jevons import main

    return main(["data", "import", "chat", *arguments])


def test_command_imports_rows_counts_the_bad_ones_and_writes_the_contract(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from jevons.recipes.llm.data import is_chat

    good = _good_rows(60)
    bad = [
        {"messages": [{"role": "user", "content": "Hello?"}]},  # no response
        {"prompt": "Hello?", "response": "   "},  # no response
        {"messages": "user: hi"},  # undecodable
        {"question": "Hello?", "answer": "Hi."},  # missing field
        good[0],  # duplicate
    ]
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps(row) for row in good[:50] + bad] + ["{not json"]  # undecodable
    (data / "chats.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(
        pa.Table.from_pylist([{"messages": conversation(r, ChatFields())} for r in good[50:]]), data / "more.parquet"
    )
    out = tmp_path / "out"
    code = _run_cli(str(data), f"out={out}", f"tokenizer={folders['chatml']}", "workers=1", "progress=false")
    assert code == 0

    report = json.loads((out / "import_report.json").read_text())
    assert report["records"] == 61 + len(bad)
    assert report["skipped"] == {"duplicate": 1, "missing field": 1, "no response": 2, "undecodable": 2}
    sources = {e["source"].rsplit(":", 1)[-1] for e in report["first_skipped"]["no response"]}
    assert sources == {"51", "52"}

    meta = json.loads((out / "meta.json").read_text())
    hf = AutoTokenizer.from_pretrained(out)  # the output folder is a whole tokenizer, template included
    assert is_chat(out) and meta["chat"] is True and meta["length_names"] == ["tokens"]
    assert meta["tokenizer"] == "tokenizer.json" and meta["chat_template_source"] == "chat_template.jinja"
    assert meta["vocab_size"] == len(hf) and meta["token_dtype"] == "uint16"
    assert hf.chat_template == CHATML_TEMPLATE
    assert meta["examples"] == meta["samples"]["train"] + meta["samples"]["val"] == 60

    rows = {f"chats-{n}": row for n, row in enumerate(good[:50], 1)} | {
        f"more-{n}": r for n, r in enumerate(good[50:], 1)
    }
    tokens_total, response_total = 0, 0
    tokenizer = _raw_tokenizer(out)
    for split in ("train", "val"):
        dataset = ShardDataset(read_index(out / f"{split}.json"), lambda sample: sample, "strict")
        for i in range(len(dataset)):
            sample = dataset.raw(i)
            tokens, mask = decode_npy(sample["tokens.npy"]), decode_npy(sample["mask.npy"])
            assert tokens.dtype == np.uint16 and mask.dtype == np.uint8 and tokens.shape == mask.shape
            messages = conversation(rows[sample["__key__"].split("_", 1)[1]], ChatFields())
            assert tokens.tolist() == _hf_ids(out, messages)
            assert _masked_runs(tokenizer, tokens.tolist(), mask.tolist()) == _expected_responses("chatml", messages)
            tokens_total, response_total = tokens_total + len(tokens), response_total + int(mask.sum())
    assert (meta["tokens"], meta["response_tokens"]) == (tokens_total, response_total)
    assert 0 < response_total < tokens_total


def test_max_tokens_skips_longer_conversations(folders: dict[str, Path], tmp_path: Path) -> None:
    rows = _good_rows(6)
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lengths = [len(_hf_ids(folders["llama3"], conversation(r, ChatFields()))) for r in rows]
    limit = sorted(lengths)[2]
    options = ChatImportOptions(
        out=str(tmp_path / "out"),
        tokenizer=str(folders["llama3"]),
        max_tokens=limit,
        workers=0,
        progress=False,
        val_fraction=0.0,
        max_skipped_fraction=1.0,
    )
    result = run_import(ChatImporter(options), [str(tmp_path / "rows.jsonl")])
    assert result.skipped == {"too long": sum(n > limit for n in lengths)}
    assert result.samples["train"] == sum(n <= limit for n in lengths)


def test_chat_data_without_a_response_is_refused_before_writing(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]},
        {"prompt": "Hello?"},
        {"prompt": "Hello?", "response": ""},
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    assert _run_cli(str(tmp_path / "rows.jsonl"), f"out={out}", f"tokenizer={folders['llama3']}") == 2
    message = capsys.readouterr().err
    assert "None of the 3 rows" in message and "(3 no response;" in message
    assert "'messages' list of role/content messages with an assistant message" in message
    assert not out.exists()


def test_rows_the_template_refuses_every_one_of_are_refused_before_writing(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template that raises on what the rows hold (Mistral v0.1's refuses a system role): nothing written."""
    folder = tmp_path / "no-system"
    shutil.copytree(folders["chatml"], folder)
    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    (folder / "chat_template.jinja").write_text(refusing + CHATML_TEMPLATE)
    rows = [{"system": "Be kind.", "prompt": f"Hi {n}", "response": "Hello."} for n in range(3)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    assert _run_cli(str(tmp_path / "rows.jsonl"), f"out={out}", f"tokenizer={folder}") == 2
    message = capsys.readouterr().err
    assert "None of the 3 rows" in message and "the chat template refused it: System role not supported" in message
    assert not out.exists()


def test_tokenizer_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    assert _run_cli(str(tmp_path / "rows.jsonl"), f"out={tmp_path / 'out'}") == 2
    message = capsys.readouterr().err
    assert "needs tokenizer=DIR" in message and "Hugging Face tokenizer folder" in message
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_folder_without_tokenizer_json_is_refused(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(folders["chatml"] / "tokenizer_config.json", folder)
    assert _run_cli(str(tmp_path / "rows.jsonl"), f"out={tmp_path / 'out'}", f"tokenizer={folder}") == 2
    message = capsys.readouterr().err
    assert f"tokenizer={folder}: no tokenizer.json there ({folder} has none)" in message
    assert not (tmp_path / "out").exists()
