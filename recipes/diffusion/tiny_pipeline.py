"""A tiny random-initialised Wan text-to-video pipeline, saved as a diffusers folder.

``python -m jevons.recipes.diffusion.tiny_pipeline OUT`` writes what
``recipe=wan_t2v_tiny`` trains and what the tests load: a diffusers
``WanPipeline`` folder (``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) with the released
Wan2.1-T2V folder's classes and layout at toy sizes: a 16-channel
``AutoencoderKLWan`` (8x spatial, 4x temporal), a two-layer ``UMT5EncoderModel``,
a Unigram tokenizer trained with ``tokenizers`` on built-in captions, a
two-layer ``WanTransformer3DModel`` and Wan's ``UniPCMultistepScheduler``
(flow sigmas, ``flow_shift`` 3). Nothing is downloaded; the same seed writes
the same weights. The loading code paths are those of a user's 1.3B folder.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from pathlib import Path

SUBJECTS = ("a red ball", "a small cat", "a white bird", "an old car", "a green frog", "a paper boat", "a tall tree")
ACTIONS = ("bouncing on", "walking across", "flying over", "rolling down", "resting on", "drifting along")
PLACES = ("the grass", "a snowy road", "the sea at night", "a wooden table", "a quiet river", "the city square")
TEXT_DIM = 32


def captions() -> list[str]:
    """The tokenizer's training text (and the tests' captions): every subject x action x place."""
    return [f"{s} {a} {p}" for s, a, p in itertools.product(SUBJECTS, ACTIONS, PLACES)]


def write_tiny_wan_pipeline(out: Path, seed: int = 0) -> Path:
    """Write the pipeline folder to ``out`` (staged under a temporary name, then renamed); returns ``out``."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline
    from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    special = ["<pad>", "</s>", "<unk>"]
    tokenizer.train_from_iterator(
        captions(), trainers.UnigramTrainer(vocab_size=256, special_tokens=special, unk_token="<unk>")
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(fast),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=fast.pad_token_id,
            eos_token_id=fast.eos_token_id,
            decoder_start_token_id=fast.pad_token_id,
        )
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    pipeline = WanPipeline(
        tokenizer=fast,  # type: ignore[arg-type]  # annotated AutoTokenizer; from_pretrained gives this class too
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(str(staging), safe_serialization=True)
    staging.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose another folder or remove it")
    print(write_tiny_wan_pipeline(args.out, args.seed))


if __name__ == "__main__":
    main()
