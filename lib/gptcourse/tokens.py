"""Floor 1, part one: text to tokens with a character-level tokenizer.

Every distinct character of a text becomes one token id; one extra id marks the end of a
sequence. Character tokens keep the vocabulary tiny (65 characters for Tiny Shakespeare)
at the price of long sequences; chapter 12 builds subword tokens (BPE), the trade-off real
models make.
"""

from collections.abc import Iterable

EOS = "<|eos|>"


class CharTokenizer:
    """Maps characters to ids and back. The end-of-sequence token takes the last id."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer takes single characters; use from_text(text) "
                             "to build the vocabulary from a string")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))
        self.eos_id = len(self.chars)
        self.itos[self.eos_id] = EOS

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """A tokenizer whose vocabulary is every character that occurs in ``text``."""
        return cls(text)

    @property
    def vocab_size(self) -> int:
        """Number of characters plus one for the end-of-sequence token."""
        return len(self.chars) + 1

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; a character outside the vocabulary raises ``ValueError``."""
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as exc:
            char = exc.args[0]
            position = text.index(char)
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                f"vocabulary of {len(self.chars)} characters; build the tokenizer from a text "
                "that contains it, or remove it from the input"
            ) from None
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Iterable[int], show_eos: bool = False) -> str:
        """The text of ``ids`` (a list or a 1-D tensor); the end-of-sequence token is dropped
        unless ``show_eos``."""
        pieces = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                if show_eos:
                    pieces.append(EOS)
                continue
            if i not in self.itos:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{self.eos_id})")
            pieces.append(self.itos[i])
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
