"""The mixed-modal family: captioned-digit data, the sequence layout, per-modality loss, generation, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jevons.framework import distributed
from jevons.framework.config.schema import ParallelConfig
from jevons.recipes.llm.shape import TransformerShapeConfig
from jevons.recipes.mixed_modal.captions import NUMBER_WORDS
from jevons.recipes.mixed_modal.data import (
    CAPTIONED_DIGITS,
    CaptionedImages,
    decode_codes,
    load_codebook,
    load_vocabulary,
)
from jevons.recipes.mixed_modal.evaluate import names_digit, per_modality
from jevons.recipes.mixed_modal.generate import MixedModalGenerator
from jevons.recipes.mixed_modal.model import MixedModalDecoder
from jevons.recipes.mixed_modal.objective import MixedModalObjective
from jevons.recipes.mixed_modal.tokens import BOI, BOS, EOI, EOS, IMAGE, TEXT


@pytest.fixture(scope="module")
def data_dir(data_cache: Path) -> Path:
    from jevons.framework.data.cache import ensure_built

    return ensure_built(CAPTIONED_DIGITS, data_cache, progress=False)


@pytest.fixture(scope="module")
def groups():
    with distributed.initialized(ParallelConfig()):
        yield


class _Data:
    corrupt = "strict"
    max_corrupt_fraction = 0.0


def test_corpus_holds_out_whole_digits_and_captions_name_the_digit(data_dir: Path) -> None:
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["splits"]["train"] == {
        "samples": 51744,
        "digits": 1617,
        "reconstruction_mse": pytest.approx(0.00215, abs=3e-4),
    }
    assert meta["splits"]["val"]["digits"] == 180
    val = CaptionedImages.from_folder(data_dir, "val", _Data())
    train = CaptionedImages.from_folder(data_dir, "train", _Data())
    val_digits = {val.samples[i]["attributes"]["source_index"] for i in range(0, len(val), 4)}
    train_digits = {train.samples[i]["attributes"]["source_index"] for i in range(0, len(train), 97)}
    assert val_digits.isdisjoint(train_digits) and all(d % 10 == 0 for d in val_digits)
    for i in range(0, len(train), 503):
        sample = train.samples[i]
        assert names_digit(sample["caption"], sample["attributes"]["digit"]), sample["caption"]
    captions = {train.samples[i]["caption"] for i in range(200)}
    assert len(captions) > 150  # phrasings vary: 200 drawings of 7 digits give many different captions


def test_sequences_have_both_orders_and_modalities_follow_the_ids(data_dir: Path) -> None:
    vocab = load_vocabulary(data_dir)
    assert vocab.image_tokens == 64 and vocab.size == 5 + len(vocab.words) + 256
    dataset = CaptionedImages.from_folder(data_dir, "val", _Data())
    orders = set()
    for i in range(40):
        ids = dataset[i]["ids"]
        assert ids[0] == BOS and ids[-1] == EOS
        start = int(np.where(ids == BOI)[0][0])
        assert ids[start + 65] == EOI and (ids[start + 1 : start + 65] >= vocab.first_code).all()
        assert vocab.modality(ids).tolist() == [IMAGE if start < j <= start + 64 else TEXT for j in range(len(ids))]
        orders.add(start == 1)
        caption_ids = ids[start + 66 : -1] if start == 1 else ids[1:start]
        assert vocab.decode_caption(caption_ids.tolist()) == dataset[i]["caption"].replace(" ,", ",")
    assert orders == {True, False}


def test_codes_decode_to_the_drawn_image(data_dir: Path) -> None:
    dataset = CaptionedImages.from_folder(data_dir, "val", _Data())
    images = decode_codes(np.stack([dataset[i]["codes"] for i in range(8)]), load_codebook(data_dir))
    assert images.shape == (8, 16, 16) and 0.0 <= images.min() and images.max() <= 1.01
    assert (images.reshape(8, -1).max(1) > 0.5).all()  # every image has a bright stroke


def test_collate_masks_padding_and_marks_target_modalities(data_dir: Path) -> None:
    dataset = CaptionedImages.from_folder(data_dir, "val", _Data())
    samples = [dataset[i] for i in range(6)]
    batch = CaptionedImages.collate(samples)
    lengths = [len(s["ids"]) - 1 for s in samples]
    assert batch["loss_mask"].sum(1).tolist() == lengths
    assert batch["real"].sum(1).tolist() == lengths
    assert (batch["target_modality"] * batch["loss_mask"]).sum().item() == 64 * 6
    assert torch.equal(batch["targets"][:, :-1], batch["input_ids"][:, 1:])


def _model(vocab, layers: int = 1) -> MixedModalDecoder:
    torch.manual_seed(0)
    shape = TransformerShapeConfig(
        hidden_size=32, num_layers=layers, num_heads=2, ffn_hidden_size=64, max_seq_len=96
    ).resolve(vocab.size + (-vocab.size) % 8)
    return MixedModalDecoder(shape, vocab.first_code)


def test_objective_splits_the_loss_by_target_modality(groups, data_dir: Path) -> None:
    vocab = load_vocabulary(data_dir)
    dataset = CaptionedImages.from_folder(data_dir, "val", _Data())
    batch = CaptionedImages.collate([dataset[i] for i in range(8)])
    model = _model(vocab).train()
    out = MixedModalObjective()(model, batch)
    shares = out.metrics["nll_text_share"] + out.metrics["nll_image_share"]
    torch.testing.assert_close(shares, out.loss.detach())
    assert out.weight == int(batch["loss_mask"].sum())
    fractions = {m: out.metrics[f"{m}_fraction"].item() for m in ("text", "image")}
    assert fractions["image"] == pytest.approx(64 * 8 / out.weight)
    exact = per_modality({f"val/{k}": v.item() for k, v in out.metrics.items()}, ("text", "image"))
    assert exact["val/loss_image"] == pytest.approx(out.metrics["loss_image"].item(), rel=1e-5)


def test_generation_in_both_directions(groups, data_dir: Path) -> None:
    vocab = load_vocabulary(data_dir)
    generator = MixedModalGenerator(_model(vocab).eval(), vocab, load_codebook(data_dir))
    images = generator.images(["a thick seven", "the digit 2"], per_caption=3, seed=1)
    assert images.shape == (6, 16, 16)
    np.testing.assert_array_equal(images, generator.images(["a thick seven", "the digit 2"], per_caption=3, seed=1))
    codes = np.stack([CaptionedImages.from_folder(data_dir, "val", _Data())[i]["codes"] for i in range(3)])
    captions = generator.captions(codes, max_words=6)
    assert len(captions) == 3 and all(set(c.replace(",", " ").split()) <= set(vocab.words) for c in captions)
    assert all(len(c.replace(",", " ,").split()) <= 6 for c in captions)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        generator.images(["a purple seven"])


def test_digit_names_are_matched_as_words() -> None:
    assert names_digit("a thick seven, tilted", 7) and names_digit("the digit 7", 7)
    assert not names_digit("a seventeen", 7) and not names_digit("the digit 1", 7)
    assert len(NUMBER_WORDS) == 10


def test_tiny_recipe_trains_and_writes_images_and_captions(train, run_root: Path) -> None:
    result = train(
        [
            "recipe=mixed_modal_tiny",
            "model.hidden_size=64",
            "model.num_layers=2",
            "data.num_workers=0",
            "data.batch_size=16",
            "trainer.max_steps=40",
            "trainer.val_check_interval=40",
            "trainer.limit_val_batches=4",
            "generate.images_per_caption=2",
            "generate.caption_images=4",
            "trainer.progress_bar=false",
            f"run.root={run_root}",
        ]
    )
    metrics = result.summary["metrics"]
    assert metrics["val/loss_image"] < 0.8 * np.log(256)  # well below a uniform guess over the codebook
    assert metrics["val/loss_text"] < 0.9 * np.log(61)  # and over the 56 words and 5 specials
    assert 0.0 <= metrics["val/caption_digit_accuracy"] <= 1.0
    samples = result.run_dir / "samples"
    assert (samples / "step_00000040_images.png").exists()
    text = (samples / "step_00000040_captions.txt").read_text()
    assert text.count("reference:") == 4

    from PIL import Image

    from jevons.framework.errors import UsageError
    from jevons.framework.inference import load_run

    with distributed.initialized(ParallelConfig()):
        run = load_run(result.run_dir)
        files = run.family.sample(run, run_root / "sampled", {"caption": "a thick seven", "count": "3"})
        assert Image.open(files[0]).size == (3 * 17 * 4, 17 * 4)  # one row of 3 images, 16 px + 1 px gap, 4x
        with pytest.raises(UsageError, match="purple"):
            run.family.sample(run, run_root / "sampled", {"caption": "a purple seven"})


def test_bad_mixed_modal_settings_are_refused(train, run_root: Path) -> None:
    from jevons.framework.errors import UsageError

    with pytest.raises(UsageError, match="model.max_seq_len=64 is shorter than the data's longest sequence"):
        train(["recipe=mixed_modal_tiny", "model.max_seq_len=64", f"run.root={run_root}"])
    with pytest.raises(UsageError, match="multiple of model.num_heads=5"):
        train(["recipe=mixed_modal_tiny", "model.num_heads=5", f"run.root={run_root}"])
