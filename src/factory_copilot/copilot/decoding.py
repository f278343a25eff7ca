"""The diagnosis' JSON answer on llama.cpp with as few forward passes as it takes: written, chosen or given.

Under a JSON-schema grammar the model generates every token of ``{"summary":"...","causes":["bearing_wear:high"],
"steps":[1,2]}``, the ones the grammar leaves no choice about too ('{"', 'summary', '":"', ...), and each costs a
forward pass (~0.15-0.2 s for a 1.5B model on one CPU thread). An ``AnswerForm`` (``language_model.py``) says which
part is which:

- **given**: the JSON around the values is appended to the model's context in one batch with what comes next, never
  generated (a batch of a few tokens costs about what one token does: the weights are read once);
- **written**: the summary, a JSON string, is sampled freely (top-k, min-p, temperature) with two masks: no control
  or special tokens, and no closing quote before its minimum length; it ends at its closing quote or its bounds
  (characters, tokens). The operator reads it as it comes;
- **chosen**: each list item is one of the form's options. The options' tokens make a trie: where one token is the only
  way on it is appended without a pass; where the options part, one pass gives the logits and the likeliest allowed
  token is sampled (same temperature). "bearing_wear:high" costs two passes (which fault, which confidence), not six.

The result is the same JSON a grammar would allow, so the same validation applies (``diagnosis.model_diagnosis``).
The text the operator sees is decoded from the model's string as it comes and re-encoded, so the stream and the
final answer say exactly the same thing, and a stray escape from the model cannot make the JSON invalid.
"""

from __future__ import annotations

import codecs
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from factory_copilot.copilot.language_model import AnswerForm, ChoiceList, ModelTimeout

OnPiece = Callable[[str], None]
_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "", ord("f"): "", ord("n"): " ", ord("r"): " ",
            ord("t"): " "}
_HEX = set(b"0123456789abcdefABCDEF")
_CONTROL = bytes(range(0x20)) + b"\x7f"


class JsonStringReader:
    """The text a JSON string body means, read as the model writes it (bytes, any split), and where it ends.

    Escapes are decoded (an invalid one keeps its character, a surrogate pair is joined, a lone half dropped), line breaks and tabs
    become spaces and other control characters are dropped: a summary is one line for the operator, and reads as
    the diagnosis will show it (``diagnosis.model_diagnosis`` cleans the parsed JSON the same way). The station's
    stream of a server's JSON (``streams.SummaryStream``) reads it with this reader too.
    """

    def __init__(self) -> None:
        self.text = ""
        self.ended = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._escape: bytes | None = None  # after a backslash: what of the escape has come so far
        self._high: int | None = None  # a surrogate pair's first half, waiting for its second (the next escape)

    def feed(self, data: bytes) -> tuple[str, int | None]:
        """The new text in ``data``, and the index just past its closing quote (None while the string is open)."""
        out: list[str] = []
        run = bytearray()

        def flush() -> None:
            if run:
                out.append(self._utf8.decode(bytes(run)))
                run.clear()

        for i, b in enumerate(data):
            if self._escape is None and b != ord("\\"):
                self._high = None  # a first half not followed by its second: dropped
            if self._escape is not None:
                esc = self._escape + bytes([b])
                if esc[0] == ord("u"):
                    if len(esc) > 1 and b not in _HEX:  # \u followed by no hex: drop the escape, read this byte afresh
                        self._escape = self._high = None
                    elif len(esc) < 5:
                        self._escape = esc
                        continue
                    else:
                        self._escape = None
                        code = int(esc[1:].decode(), 16)
                        high, self._high = self._high, None
                        if 0xD800 <= code < 0xDC00:
                            self._high = code
                        elif not 0xDC00 <= code <= 0xDFFF:
                            out.append(chr(code))
                        elif high is not None:
                            out.append(chr(0x10000 + ((high - 0xD800) << 10) + code - 0xDC00))
                        continue
                else:
                    self._escape = self._high = None
                    out.append(_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else ""))
                    continue
            if b == ord("\\"):
                flush()
                self._escape = b""
            elif b == ord('"'):
                flush()
                self.ended = True
                return self._append(out), i + 1
            else:
                run.append(b)
        flush()
        return self._append(out), None

    def _append(self, out: list[str]) -> str:
        new = "".join(" " if c in "\t\n\r" else c for c in "".join(out) if c in "\t\n\r" or " " <= c != "\x7f")
        self.text += new
        return new


class Vocabulary:
    """Each token's bytes and the masks the written text needs, read once per model (~0.2 s for 152k tokens)."""

    def __init__(self, llama: Any):
        import ctypes

        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        n = llama.n_vocab()
        buf = ctypes.create_string_buffer(256)
        pieces: list[bytes] = []
        normal = np.zeros(n, dtype=bool)
        quote = np.zeros(n, dtype=bool)
        end = np.zeros(n, dtype=bool)
        usable = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL | llama_cpp.LLAMA_TOKEN_ATTR_BYTE
        for t in range(n):
            size = llama_cpp.llama_token_to_piece(vocab, t, buf, 256, 0, False)
            piece = buf.raw[:size] if size > 0 else b""
            pieces.append(piece)
            attr = llama_cpp.llama_vocab_get_attr(vocab, t)
            # text tokens only: no control token (<|im_end|>), no empty piece, no control character (a summary is one line)
            normal[t] = bool(piece) and bool(attr & usable) and len(piece.translate(None, _CONTROL)) == len(piece)
            quote[t] = 0x22 in piece
            end[t] = bool(llama_cpp.llama_vocab_is_eog(vocab, t))
        self.pieces = pieces
        self.text = normal
        self.text_no_quote = normal & ~quote
        self.end = end  # the tokens that end a turn (<|im_end|>, <|endoftext|>)


@dataclass(slots=True)
class Sampling:
    temperature: float = 0.2
    top_k: int = 40
    min_p: float = 0.05
    seed: int = 0


def says_something(end: np.ndarray, min_tokens: int) -> Callable[[Any, np.ndarray], np.ndarray]:
    """A llama-cpp-python logits processor: no end of turn among the first ``min_tokens`` tokens of the answer.

    A free answer (an operator's question) that ends at once says nothing; the copilot would fall back to the
    runbooks for want of a model that answers.
    """
    start: list[int] = []

    def processor(input_ids: Any, scores: np.ndarray) -> np.ndarray:
        if not start:
            start.append(len(input_ids))  # the first call sees the prompt alone
        if len(input_ids) - start[0] < min_tokens:
            scores[end[: len(scores)]] = -np.inf
        return scores

    return processor


class FormDecoder:
    """Answers one prompt in the form of an ``AnswerForm`` on a ``llama_cpp.Llama`` (see the module docstring).

    ``passes`` counts the forward passes, ``tokens`` the answer's tokens in the context (written, chosen, given).
    """

    def __init__(self, llama: Any, vocabulary: Vocabulary, sampling: Sampling, on_piece: OnPiece | None = None,
                 deadline: float | None = None, threads: Callable[[], tuple[int, int]] | None = None,
                 started: float | None = None):
        self.llama = llama
        self.started = started or time.perf_counter()  # the times in ``stats`` count from here
        self.vocab = vocabulary
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.on_piece = on_piece
        self.deadline = deadline
        # (generation, prompt) threads for the next pass, asked before each: the model takes the cores the machine
        # leaves idle and gives one back within a pass when other work wants it
        self.threads = threads
        self._set: tuple[int, int] | None = None
        self._thread_passes = 0
        self.pending: list[int] = []  # given or chosen tokens not yet in the context
        self.passes = 0
        self.tokens = 0
        self.out: list[str] = []
        self.stats: dict[str, float] = {}
        self._tokenized: dict[str, list[int]] = {}

    # ---- the model ----------------------------------------------------------------------------------------------

    def _tok(self, text: str) -> list[int]:
        if text not in self._tokenized:
            self._tokenized[text] = self.llama.tokenize(text.encode(), add_bos=False, special=False)
        return self._tokenized[text]

    def _logits(self) -> np.ndarray:
        """Evaluate what is pending (one forward pass, batched) and return the last position's logits."""
        import llama_cpp

        if self.threads:
            now = self.threads()
            if now != self._set:
                self.llama._ctx.set_n_threads(*now)
                self._set = now
            if self.passes == 0:
                self.stats["threads_batch"] = float(now[1])
            else:
                self._thread_passes += now[0]
        self.llama.eval(self.pending)
        self.tokens += len(self.pending)
        self.pending = []
        self.passes += 1
        self._check_deadline()
        ptr = llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llama.n_vocab(),))

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise ModelTimeout("generation stopped at its deadline", "".join(self.out))

    def _sample(self, logits: np.ndarray, allowed: np.ndarray) -> int:
        """Top-k, min-p and temperature over the allowed tokens (greedy at temperature 0)."""
        s = self.sampling
        masked = np.where(allowed, logits, -np.inf)
        k = min(s.top_k, int(allowed.sum())) or 1
        top = np.argpartition(masked, -k)[-k:]
        z = masked[top].astype(np.float64)
        if s.temperature <= 0:
            return int(top[int(np.argmax(z))])
        p = np.exp((z - z.max()) / s.temperature)
        p[p < s.min_p * p.max()] = 0.0
        return int(self.rng.choice(top, p=p / p.sum()))

    def _emit(self, text: str) -> None:
        if text:
            self.out.append(text)
            if self.on_piece:
                self.on_piece(text)

    # ---- the answer ---------------------------------------------------------------------------------------------

    def prompt(self, tokens: list[int]) -> None:
        """Reuse the longest cached prefix of ``tokens`` and have the rest pending (it goes with the first pass)."""
        llama = self.llama
        cached = llama.input_ids[: llama.n_tokens].tolist()
        same = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            same += 1
        same = min(same, len(tokens) - 1)  # at least one token is evaluated: it gives the logits
        llama.n_tokens = same
        self.stats["cached_tokens"] = float(same)
        self.stats["prompt_tokens"] = float(len(tokens))
        self.pending = list(tokens[same:])

    def answer(self, form: AnswerForm) -> str:
        """The whole answer as JSON text; its pieces go to ``on_piece`` as they are settled."""
        opening = f"{{{json.dumps(form.text_key)}:\""
        self.pending += self._tok(opening)  # given, in the prompt's batch: the first pass already writes the text
        self.stats["prompt_tokens"] = self.stats.get("prompt_tokens", 0.0) + len(self._tok(opening))
        self._emit(opening)
        given = self._write(form) + '"'
        self._emit('"')
        for lst in form.lists:
            given = self._list(lst, given)
        self._emit("}")
        self.tokens += len(self.pending) + len(self._tok(given + "}"))  # settled, never needed in the context
        self.stats.update(total_s=time.perf_counter() - self.started, passes=float(self.passes),
                          answer_tokens=float(self.tokens))
        if self.passes > 1 and self._thread_passes:
            self.stats["threads"] = self._thread_passes / (self.passes - 1)
        return "".join(self.out)

    def _write(self, form: AnswerForm) -> str:
        """Sample the free string; returns the text of its last token before the closing quote, if it held one."""
        reader = JsonStringReader()
        for _ in range(max(1, form.max_tokens)):
            logits = self._logits()
            if "prompt_s" not in self.stats:
                self.stats["prompt_s"] = time.perf_counter() - self.started
                self.tokens = 0  # the prompt is not the answer
            allowed = self.vocab.text_no_quote if len(reader.text) < form.min_chars else self.vocab.text
            token = self._sample(logits, allowed)
            piece = self.vocab.pieces[token]
            before = len(reader.text)
            new, end = reader.feed(piece)
            cut = len(reader.text) > form.max_chars
            if cut:  # at its bound: what is over is not shown, and the string closes
                new = new[: max(0, form.max_chars - before)]
                reader.text = reader.text[: form.max_chars]
            if new:
                self.stats.setdefault("first_text_s", time.perf_counter() - self.started)
                self._emit(json.dumps(new, ensure_ascii=False)[1:-1])
            if end is not None:  # the quote came inside this token: its text before the quote joins what is given next
                return piece[: end - 1].decode(errors="ignore")
            self.pending.append(token)
            if cut:
                break
        return ""

    def _list(self, lst: ChoiceList, given: str) -> str:
        """Choose the list's items; returns the given text that follows them (not yet in the context)."""
        head = f",{json.dumps(lst.key)}:["
        self._emit(head)
        given += head
        chosen: list[str] = []

        def key(option: str) -> str:
            return option.partition(lst.distinct_before)[0] if lst.distinct_before else option

        while True:
            left = [o for o in lst.options if key(o) not in {key(c) for c in chosen}]
            n = len(chosen)
            ways = ["]"] if n >= lst.min_items or not left else []
            if n < lst.max_items:
                ways += [("," if n else "") + o for o in left]
            if len(ways) > 1:
                pick, given = ways[self._choose(given, ways)], ""
            else:
                pick = (ways or ["]"])[0]
                given += pick
            self._emit(pick)
            if pick == "]":
                return given
            chosen.append(pick[1:] if n else pick)

    def _choose(self, given: str, ways: list[str]) -> int:
        """Walk the ways' tokens (each after the given text, so the joins tokenize as they would in one piece):
        append where only one token can follow, one pass where they part. Returns the chosen way's index."""
        seqs = [self._tok(given + w) for w in ways]
        alive = list(range(len(ways)))
        pos = 0
        while True:
            if len(alive) == 1:
                self.pending.extend(seqs[alive[0]][pos:])
                return alive[0]
            ended = [i for i in alive if len(seqs[i]) == pos]
            if ended:  # one way is a prefix of another (in tokens): the shorter stands
                return ended[0]
            nxt = {seqs[i][pos] for i in alive}
            if len(nxt) == 1:
                self.pending.append(nxt.pop())
            else:
                logits = self._logits()
                allowed = np.zeros(len(logits), dtype=bool)
                allowed[list(nxt)] = True
                token = self._sample(logits, allowed)
                self.pending.append(token)
                alive = [i for i in alive if seqs[i][pos] == token]
            pos += 1
