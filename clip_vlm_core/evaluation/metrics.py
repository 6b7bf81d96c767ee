"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap's scorers, called directly.

pycocoevalcap's PTB tokenizer and METEOR are Java programs. Where Java is missing, the text is tokenized by
a small Python tokenizer instead (lowercase, punctuation dropped, as PTB + pycocoevalcap do) and METEOR is
reported as unavailable rather than failing the whole evaluation.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_USE_PATH = object()  # default of `java`: look it up on PATH when the scorer starts
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def one_line(text: str) -> str:
    """Control characters and line/paragraph separators as spaces.

    The PTB tokenizer reads one caption per line: a stray carriage return in a model's caption would
    otherwise shift every later caption onto the wrong sample.
    """
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def simple_tokenize(text: str) -> str:
    """Lowercase words with punctuation removed, space-joined: the Java-free stand-in for PTB."""
    return " ".join(_WORD.findall(text.lower()))


def ptb_tokenize(texts: Sequence[str], java: str = "java") -> list[str]:
    """pycocoevalcap's PTB tokenization (its Stanford jar, lowercased, its punctuation list removed).

    Run here rather than through `PTBTokenizer.tokenize`, which writes a temporary file into the installed
    package (fails on read-only installs), reads it in the platform charset, and prints to our stderr.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    command = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    result = subprocess.run(command, input="\n".join(texts) + "\n", capture_output=True, encoding="utf-8")
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < len(texts):
        raise RuntimeError(f"the PTB tokenizer failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.split() if w not in punctuation) for line in lines[: len(texts)]]


class CaptionScorer:
    """Scores prediction sets against references; holds one METEOR process for all the sets it scores.

    METEOR's Java process takes seconds to load its paraphrase tables, so a base-vs-fine-tuned comparison
    scores both models with one scorer. Use as a context manager so the process ends promptly.
    """

    def __init__(self, java: str | None | object = _USE_PATH) -> None:
        self.java = shutil.which("java") if java is _USE_PATH else java
        self._meteor: Any = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            process = self._meteor.meteor_p
            process.stdin.close()
            process.kill()
            process.wait()  # pycocoevalcap's own __del__ repeats these steps harmlessly
            self._meteor = None

    def tokenize(self, texts: Sequence[str]) -> list[str]:
        texts = [one_line(t) for t in texts]
        if self.java is None:
            return [simple_tokenize(t) for t in texts]
        return ptb_tokenize(texts, self.java)

    def score(self, references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
        """Corpus-level scores, one reference per prediction. METEOR is None when Java is missing."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if len(references) != len(predictions):
            raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
        if not references:
            raise ValueError("no captions to score")
        tokens = self.tokenize([*references, *predictions])
        gts = {i: [tokens[i]] for i in range(len(references))}
        res = {i: [tokens[len(references) + i]] for i in range(len(references))}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        metrics: dict[str, Any] = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
        metrics["METEOR"] = self._meteor_score(gts, res)
        if metrics["METEOR"] is None:
            metrics["METEOR_unavailable_reason"] = "Java was not found on PATH; METEOR runs in Java"
        metrics["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        return metrics

    def _meteor_score(self, gts: dict, res: dict) -> float | None:
        if self.java is None:
            return None
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return float(self._meteor.compute_score(gts, res)[0])


def caption_metrics(
    references: Sequence[str], predictions: Sequence[str], java: str | None | object = _USE_PATH
) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of `predictions` against `references` (one each).

    `java=None` scores without Java (simple tokenizer, METEOR null with a reason); by default Java is
    looked up on PATH.
    """
    with CaptionScorer(java) as scorer:
        return scorer.score(references, predictions)
