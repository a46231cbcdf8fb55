#!/usr/bin/env python3
"""Build a tiny, random-weight Qwen2 model that real vLLM can serve on CPU.

    python make_tiny_model.py OUT_DIR [--expect-sha256 HEX]

No weights can be downloaded here, so the model is made from scratch:

* tokenizer: byte-level BPE, vocab 8192, trained on the text files under
  /usr/share/common-licenses and /usr/share/doc (gzip files decompressed,
  binary files skipped, the first 16 Ki characters of each), read in sorted
  path order (~30 M characters; the whole files are 228 M and train 8x slower). Special tokens <|endoftext|> (id 0, bos/pad),
  <|im_start|> (1) and <|im_end|> (2, eos); ChatML chat template.
* network: Qwen2ForCausalLM, hidden 256, 4 layers, 4 heads / 2 KV heads,
  intermediate 768, max_position_embeddings 4096, tied embeddings, bf16.
  Every tensor is drawn from one seeded torch.Generator in sorted name order,
  so the weights (and their sha256) are the same on every run and every
  machine with the same torch. TINY_HIDDEN / TINY_LAYERS / TINY_SEED change
  the shape or the seed (and so the hash).

The tokenizer depends on which documentation files the machine has (installing
a Debian package adds files under /usr/share/doc); the weights do not.
The script prints the sha256 of model.safetensors and of tokenizer.json and
writes them to OUT_DIR/SHA256SUMS.
"""

import argparse
import gzip
import hashlib
import json
import os
import sys

CORPUS_ROOTS = ("/usr/share/common-licenses", "/usr/share/doc")
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MAX_FILE_BYTES = 4 << 20  # skip files whose (compressed) size is above this
CHARS_PER_FILE = 16384  # train on the first 16 Ki characters of each file

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_files():
    """Regular files under CORPUS_ROOTS, sorted by path (symlinks skipped)."""
    paths = []
    for root in CORPUS_ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                paths.append(p)
    return sorted(paths)


def read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return None
        if path.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\0" in data[:4096]:  # binary
        return None
    return data.decode("utf-8", errors="replace")[:CHARS_PER_FILE]


def build_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    files = corpus_files()
    corpus_hash = hashlib.sha256()
    texts = []
    for p in files:
        t = read_text(p)
        if t:
            corpus_hash.update(p.encode() + b"\0" + t.encode() + b"\0")
            texts.append(t)
    print(f"tokenizer corpus: {len(texts)} files, {sum(map(len, texts)) / 1e6:.1f} M chars, "
          f"sha256 {corpus_hash.hexdigest()[:16]}")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if tok.get_vocab_size() != VOCAB_SIZE:
        sys.exit(f"tokenizer vocab is {tok.get_vocab_size()}, expected {VOCAB_SIZE}")
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)


def build_model(out_dir):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    hidden = int(os.environ.get("TINY_HIDDEN", "256"))
    layers = int(os.environ.get("TINY_LAYERS", "4"))
    seed = int(os.environ.get("TINY_SEED", "20251128"))
    heads, kv_heads = 4, 2
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)

    # Fill every tensor ourselves from one generator, in sorted name order, so
    # the result does not depend on how transformers initialises weights.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            else:  # weights and q/k/v biases
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=0).save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen2ForCausalLM hidden={hidden} layers={layers} heads={heads}/{kv_heads} "
          f"params={n_params / 1e6:.2f}M seed={seed}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--expect-sha256", help="fail unless the weights hash to this")
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    build_tokenizer(args.out_dir)
    build_model(args.out_dir)

    weights = os.path.join(args.out_dir, "model.safetensors")
    w_sha = sha256_file(weights)
    t_sha = sha256_file(os.path.join(args.out_dir, "tokenizer.json"))
    with open(os.path.join(args.out_dir, "SHA256SUMS"), "w") as f:
        f.write(f"{w_sha}  model.safetensors\n{t_sha}  tokenizer.json\n")
    with open(os.path.join(args.out_dir, "config.json")) as f:
        arch = json.load(f)["architectures"]
    print(f"wrote {args.out_dir} ({arch[0]}, {os.path.getsize(weights) / 1e6:.1f} MB weights)")
    print(f"tokenizer.json sha256: {t_sha}")
    print(f"weights sha256: {w_sha}")
    if args.expect_sha256 and args.expect_sha256 != w_sha:
        sys.exit(f"weights sha256 {w_sha} != expected {args.expect_sha256}")


if __name__ == "__main__":
    main()
