"""Tiny random-weight vision-language models of real architectures, saved like a hub checkpoint.

Real VLM weights cannot be downloaded in CI, so tests build a two-layer model of the real class
from its config, pair it with a real processor whose tokenizer is a small BPE trained here, and
`save_pretrained` both into a folder. Loading that folder goes through exactly the code a real
checkpoint does (AutoProcessor + AutoModelForImageTextToText). Captions are nonsense; the shapes,
token plumbing, batching and decoding are real.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

_WORDS = (
    "a the and of in on with to is are at from by for this that video shows frame frames scene "
    "person people man woman child dog cat car bike road street city tree trees sky cloud clouds "
    "water river sea beach sand grass field mountain house building room table chair window door "
    "light dark bright red green blue yellow white black brown gray orange camera moves pans "
    "zooms slowly quickly left right up down close wide shot view background foreground center "
    "walking running riding sitting standing talking looking holding playing driving flying "
    "describe detail details detailed motion colors objects lighting style sunny night day "
    "indoor outdoor small large tall short old young two three several many one an it its"
).split()

# Qwen2-VL's chat format, reduced to what captioning sends: text, image and video parts.
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-OneVision's chat format (Qwen2 turns, <image>/<video> placeholders).
_LLAVA_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}<video>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# SmolVLM's chat format (user/assistant turns ending in <end_of_utterance>).
_SMOL_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}{{ '<image>' }}{% elif c['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _tokenizer(special: list[str], **named: str):
    """A byte-level BPE trained on a few hundred words, with the model's special tokens first."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([" ".join(_WORDS)] * 4 + _WORDS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **named)


def _text_config(tok, bos: str, eos: str, **extra) -> dict:
    """Two small decoder layers over the tiny vocabulary."""
    ids = tok.convert_tokens_to_ids
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids(bos),
        eos_token_id=ids(eos),
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def _save(model_cls, config, processor, tok, eos: str, path: Path, seed: int) -> Path:
    """Random weights from the seed; generation stops at `eos` and pads with the pad token."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(eos)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_qwen_vl(path: str | Path, version: str = "2", seed: int = 0) -> Path:
    """A two-layer Qwen2-VL (`version="2"`) or Qwen2.5-VL (`"2.5"`) with a matching processor."""
    import transformers as tf

    if version == "2":
        config_cls, model_cls, processor_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
        vision = dict(embed_dim=32, mlp_ratio=2)
    elif version == "2.5":
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
        processor_cls = tf.Qwen2_5_VLProcessor
        vision = dict(intermediate_size=64, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1])
    else:
        raise ValueError(f"unknown Qwen-VL version {version}")
    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    patch, merge, temporal = 14, 2, 2
    config = config_cls(
        text_config=_text_config(
            tok,
            "<|endoftext|>",
            "<|im_end|>",
            # mrope_section splits head_dim/2 rotary frequencies over (time, height, width).
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            num_heads=2,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=temporal,
            **vision,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = config.text_config
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // text.num_attention_heads
    # The processor's patching must match the vision tower; a small pixel range keeps tests fast.
    common = dict(patch_size=patch, merge_size=merge, temporal_patch_size=temporal,
                  min_pixels=56 * 56, max_pixels=112 * 112)
    processor = processor_cls(
        image_processor=tf.Qwen2VLImageProcessor(**common),
        video_processor=tf.Qwen2VLVideoProcessor(**common),
        tokenizer=tok,
        chat_template=_QWEN_TEMPLATE,
    )
    return _save(model_cls, config, processor, tok, "<|im_end|>", path, seed)


def build_smolvlm(path: str | Path, seed: int = 0) -> Path:
    """A two-layer SmolVLM (Idefics3 vision + Llama text, takes video as timestamped frames)."""
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<video>",
               "<fake_token_around_image>", "<global-img>"]
    tok = _tokenizer(special, eos_token="<end_of_utterance>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    image_size, patch, scale = 64, 16, 2
    seq_len = (image_size // patch) ** 2 // scale**2
    config = SmolVLMConfig(
        text_config=_text_config(tok, "<|im_start|>", "<end_of_utterance>", model_type="llama"),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
        ),
        image_token_id=ids["<image>"],
        scale_factor=scale,
    )
    edge = {"longest_edge": image_size}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(size=edge, max_image_size=edge, do_image_splitting=False),
        video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge),
        tokenizer=tok,
        image_seq_len=seq_len,
        chat_template=_SMOL_TEMPLATE,
    )
    return _save(SmolVLMForConditionalGeneration, config, processor, tok, "<end_of_utterance>", path, seed)


def build_llava_onevision(path: str | Path, seed: int = 0) -> Path:
    """A two-layer LLaVA-OneVision (SigLIP vision + Qwen2 text, pooled video frames)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = _tokenizer(special, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    image_size, patch = 64, 16
    config = LlavaOnevisionConfig(
        text_config=_text_config(tok, "<|endoftext|>", "<|im_end|>", model_type="qwen2"),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            vision_use_head=False,
        ),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        image_grid_pinpoints=[[image_size, image_size]],
    )
    square = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=[[image_size, image_size]]),
        video_processor=LlavaOnevisionVideoProcessor(size=square),
        tokenizer=tok,
        num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_LLAVA_TEMPLATE,
    )
    return _save(LlavaOnevisionForConditionalGeneration, config, processor, tok, "<|im_end|>", path, seed)
