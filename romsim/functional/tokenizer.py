"""Byte-level BPE tokenizer and chat template rebuilt from a GGUF file's ``tokenizer.ggml.*``
fields (``tokenizers`` library + jinja2; offline, no tokenizer.json needed).

Pre-tokenization follows llama.cpp's pre-tokenizer named in ``tokenizer.ggml.pre``: ``smollm``
splits every digit on its own, then applies the GPT-2 regex (byte-level, no prefix space).
As in the Hugging Face tokenizer of these models, encoding adds no BOS token; the chat template
supplies the special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gguf_io import GGUFError, GGUFModel

_SUPPORTED_PRE = ("smollm", "gpt2", "default", None)


@dataclass
class GGUFTokenizer:
    tok: object  # tokenizers.Tokenizer
    chat_template: str | None
    bos_id: int | None
    eos_id: int | None
    special_ids: frozenset[int]

    @classmethod
    def from_gguf(cls, model: GGUFModel) -> GGUFTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        md = model.metadata
        src = str(model.path)
        kind = md.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise GGUFError(
                "tokenizer.ggml.model",
                kind,
                "only byte-level BPE ('gpt2') is supported",
                source=src,
            )
        pre = md.get("tokenizer.ggml.pre")
        if pre not in _SUPPORTED_PRE:
            raise GGUFError(
                "tokenizer.ggml.pre",
                pre,
                f"unsupported pre-tokenizer; supported: {_SUPPORTED_PRE[:3]}",
                source=src,
            )
        tokens = md.get("tokenizer.ggml.tokens")
        merges = md.get("tokenizer.ggml.merges")
        if not tokens or merges is None:
            raise GGUFError(
                "tokenizer.ggml.tokens", None, "vocabulary or merges missing", source=src
            )
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = []
        for mline in merges:
            a, _, b = mline.partition(" ")
            pairs.append((a, b))
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        steps = []
        if pre == "smollm":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tk.decoder = decoders.ByteLevel()
        types = md.get("tokenizer.ggml.token_type") or []
        special = [i for i, t in enumerate(types) if t == 3]  # CONTROL tokens
        from tokenizers import AddedToken

        tk.add_special_tokens(
            [AddedToken(tokens[i], special=True, normalized=False) for i in special]
        )
        return cls(
            tok=tk,
            chat_template=md.get("tokenizer.chat_template"),
            bos_id=md.get("tokenizer.ggml.bos_token_id"),
            eos_id=md.get("tokenizer.ggml.eos_token_id"),
            special_ids=frozenset(special),
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=skip_special)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        if not self.chat_template:
            raise GGUFError("tokenizer.chat_template", None, "the model has no chat template")
        import jinja2

        env = jinja2.Environment(autoescape=False, keep_trailing_newline=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )
