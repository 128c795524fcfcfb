"""Free-text report labeling: paper 000's keyword labeler (Table 1) and a NegEx-style negation/uncertainty variant.

Paper 000 (Bajwa et al., section 3.1.1) labels a report positive for a class when any of the class's Table 1
keywords is present, with no negation or uncertainty detection; "No Finding" is a class like the others, found
by its own keywords ('normal study', ...). `label_reports(texts)` implements Table 1 as printed: the report is
lower-cased, runs of white space become one space, and each keyword is searched as a plain substring. Table 1 as
printed does not label the effusions of the paper's own Table 2 sample reports ('moderate right pleural effusion',
'pleural effusions'), so the labeler the paper ran was broader than its table (the data chapter shows this).

`label_reports(texts, negation=True)` keeps the same keywords but reads each match in its sentence:
- negated when a pre-negation trigger (PRE_NEGATION) precedes it within its scope, or a post-negation trigger
  (POST_NEGATION) follows it within its scope;
- uncertain when an uncertainty trigger (PRE_UNCERTAINTY / POST_UNCERTAINTY) does so instead;
- a scope ends at the sentence end, at a terminator (SCOPE_TERMINATORS: 'but', 'however', ';', ...) and after
  SCOPE_WORDS words (NegEx's window); a pseudo-trigger ('no change', 'not only', ...) is not a negation.
  Known limits of this simple scope: 'and' and commas do not end it ('No pneumothorax and a small right pleural
  effusion' negates the effusion), and a normal phrase that carries its own 'no' can fall in an earlier
  negation's scope ('no focal consolidation, no acute cardiopulmonary disease').
A class is 1 when any of its matches is positive, or uncertain and `uncertain_as=1` (the default: U-Ones, the
policy paper 000 chose to match its labeler). "No Finding" is 1 when one of its keywords is matched un-negated
and none of the four diseases is labeled 1 (the paper: "denotes the absence of the diseased classes").

`keywords=GENERIC_KEYWORDS` swaps in a broader vocabulary of ours (Table 1 plus the class names and common
American phrasings) to show what negation detection changes once the keywords include phrases reports negate.

The Indiana University reports replace identifying words by 'XXXX': 'x-XXXX' is read as 'x-ray', other 'XXXX'
tokens are kept as text but are not counted as words of a negation scope (one token may hide several words).
"""
from __future__ import annotations

import argparse
import codecs
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from cxrcore.atomic import atomic_write

DISEASES = ("Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia")
CLASSES = (*DISEASES, "No Finding")

# Paper 000, Table 1 ("Keywords for Shifa International Hospital reports classification"), verbatim.
TABLE1_KEYWORDS: dict[str, tuple[str, ...]] = {
    "No Finding": (
        "normal study",
        "unremarkable study",
        "no active lung lesion",
        "no active lung disease",
        "no acute cardiopulmonary lesion",
    ),
    "Atelectasis": ("atelectasis", "atelectatic bands"),
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac size"),
    "Pleural Effusion": ("bilateral pleural effusion", "right sided pleural effusion", "left sided pleural effusion"),
    "Pneumonia": ("air space opacification", "air space consolidation", "opacification", "zone infiltrates"),
}

# Not the paper's: Table 1 plus the class names and a few common phrasings of American reports, written after
# reading a handful of IU impressions (so scores on the IU reports flatter it a little). It exists to show what
# negation detection changes once the vocabulary contains phrases that reports usually negate.
GENERIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "No Finding": (*TABLE1_KEYWORDS["No Finding"], "normal chest", "no acute cardiopulmonary", "no active disease",
                   "no acute disease"),
    "Atelectasis": (*TABLE1_KEYWORDS["Atelectasis"], "atelectases", "atelectatic"),
    "Cardiomegaly": (*TABLE1_KEYWORDS["Cardiomegaly"], "cardiac enlargement", "enlarged heart", "heart is enlarged",
                     "enlarged cardiac silhouette", "cardiac silhouette is enlarged"),
    "Pleural Effusion": (*TABLE1_KEYWORDS["Pleural Effusion"], "pleural effusion", "pleural fluid"),
    "Pneumonia": (*TABLE1_KEYWORDS["Pneumonia"], "pneumonia"),
}

# NegEx-style triggers (after Chapman et al. 2001), kept small on purpose; matched as whole words.
PRE_NEGATION = ("no", "not", "without", "negative for", "free of", "clear of", "no evidence of", "resolved",
                "resolution of", "absence of", "rules out", "ruled out")
POST_NEGATION = ("is ruled out", "are ruled out", "has resolved", "have resolved", "resolved", "unlikely",
                 "is not seen", "are not seen", "not identified", "is absent", "are absent")
PRE_UNCERTAINTY = ("possible", "possibly", "may represent", "may be", "could represent", "could be", "cannot exclude",
                   "can not exclude", "cannot rule out", "suggest", "suggests", "suggestive of", "suggesting",
                   "questionable", "question of", "equivocal", "versus", "vs")
POST_UNCERTAINTY = ("cannot be excluded", "can not be excluded", "not excluded", "is not excluded", "is possible",
                    "is suspected", "versus", "vs", "?")
# Phrases that contain a trigger but do not negate ('no change in the bilateral pleural effusion').
PSEUDO_TRIGGERS = ("no change", "no interval change", "no significant change", "not only", "no increase",
                   "not changed", "not significantly changed")
SCOPE_TERMINATORS = ("but", "however", "although", "though", "except", "aside from", "apart from", "which",
                     "whereas", "yet", ";", ":")
SCOPE_WORDS = 8  # at most this many words between a trigger and the keyword it governs

_XRAY = re.compile(r"x-\s?xxxx", re.IGNORECASE)
_ANONYMIZED = re.compile(r"^x{2,}[.,]?$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Mention(NamedTuple):
    """One keyword match: the class, the keyword, the sentence it sits in and its status."""

    finding: str
    keyword: str
    sentence: str
    status: str  # 'positive', 'negated' or 'uncertain'


def normalize(text: str) -> str:
    """Lower-case, read IU's 'x-XXXX' as 'x-ray', and collapse white space."""
    text = _XRAY.sub("x-ray", "" if text is None or text != text else str(text))
    return " ".join(text.lower().split())


def sentences(text: str) -> list[str]:
    """Split normalized text into sentences at '.', '!' or '?' followed by white space."""
    return [part for part in _SENTENCE_END.split(normalize(text)) if part]


def _phrase_pattern(phrases: Sequence[str]) -> re.Pattern:
    """One regex matching any phrase as whole words, longest first."""
    parts = [re.escape(p) if not p[-1].isalnum() else rf"\b{re.escape(p)}\b" for p in sorted(phrases, key=len)[::-1]]
    return re.compile("|".join(parts))


_PRE_NEG = _phrase_pattern(PRE_NEGATION)
_POST_NEG = _phrase_pattern(POST_NEGATION)
_PRE_UNC = _phrase_pattern(PRE_UNCERTAINTY)
_POST_UNC = _phrase_pattern(POST_UNCERTAINTY)
_PSEUDO = _phrase_pattern(PSEUDO_TRIGGERS)
_TERMINATOR = _phrase_pattern(SCOPE_TERMINATORS)


def _in_scope(gap: str) -> bool:
    """Whether a trigger reaches across `gap` (the text between it and the keyword)."""
    if _TERMINATOR.search(gap):
        return False
    words = [w for w in gap.split() if not _ANONYMIZED.match(w)]
    return len(words) <= SCOPE_WORDS


def _masked(sentence: str) -> str:
    """The sentence with pseudo-triggers blanked out (same length, so positions still line up)."""
    return _PSEUDO.sub(lambda m: " " * len(m.group()), sentence)


def _triggered_before(pattern: re.Pattern, sentence: str, start: int) -> bool:
    """Whether a trigger of `pattern` ends before `start` with the keyword inside its scope."""
    return any(_in_scope(sentence[m.end():start]) for m in pattern.finditer(sentence, 0, start))


def _triggered_after(pattern: re.Pattern, sentence: str, end: int) -> bool:
    """Whether a trigger of `pattern` starts after `end` with the keyword inside its scope."""
    return any(_in_scope(sentence[end:m.start()]) for m in pattern.finditer(sentence, end))


def _status(sentence: str, start: int, end: int) -> str:
    """'negated', 'uncertain' or 'positive' for the keyword at sentence[start:end]."""
    masked = _masked(sentence)
    if _triggered_before(_PRE_NEG, masked, start) or _triggered_after(_POST_NEG, masked, end):
        return "negated"
    if _triggered_before(_PRE_UNC, masked, start) or _triggered_after(_POST_UNC, masked, end):
        return "uncertain"
    return "positive"


def _check_keywords(keywords: Mapping[str, Sequence[str]]) -> None:
    """Raise if the keyword table does not cover exactly the five classes."""
    if set(keywords) != set(CLASSES):
        raise ValueError(f"keyword table must have exactly the classes {list(CLASSES)}, got {sorted(keywords)}")


def explain(text: str, negation: bool = False, keywords: Mapping[str, Sequence[str]] | None = None) -> list[Mention]:
    """Every keyword match in `text` as Mention(finding, keyword, sentence, status), in reading order."""
    keywords = TABLE1_KEYWORDS if keywords is None else keywords
    _check_keywords(keywords)
    mentions = []
    for sentence in sentences(text):
        found = []
        for finding in CLASSES:
            for keyword in keywords[finding]:
                needle = keyword.lower()
                start = sentence.find(needle)
                while start != -1:  # plain substring search, as the paper describes
                    status = _status(sentence, start, start + len(needle)) if negation else "positive"
                    found.append((start, Mention(finding, keyword, sentence, status)))
                    start = sentence.find(needle, start + 1)
        mentions += [mention for _, mention in sorted(found, key=lambda pair: pair[0])]
    return mentions


def _labels(mentions: list[Mention], negation: bool, uncertain_as: int) -> dict[str, int]:
    """The five 1/0 labels of one report from its mentions."""
    counted = {"positive"} | ({"uncertain"} if uncertain_as == 1 else set())
    labels = {c: int(any(m.finding == c and m.status in counted for m in mentions)) for c in CLASSES}
    if negation:  # a normal-study phrase does not outweigh a disease the same report states
        normal = any(m.finding == "No Finding" and m.status == "positive" for m in mentions)
        labels["No Finding"] = int(normal and not any(labels[d] for d in DISEASES))
    return labels


def label_reports(texts: Sequence[str], negation: bool = False, uncertain_as: int = 1,
                  keywords: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """1/0 labels for the five classes of paper 000, one row per text (index aligned with `texts`)."""
    if uncertain_as not in (0, 1):
        raise ValueError(f"uncertain_as must be 0 or 1, got {uncertain_as!r}")
    index = texts.index if isinstance(texts, pd.Series) else pd.RangeIndex(len(texts))
    rows = [_labels(explain(text, negation, keywords), negation, uncertain_as) for text in texts]
    return pd.DataFrame(rows, index=index, columns=list(CLASSES)).astype(int)


# ------------------------------------------------------------------------------------------- CSV input
ENCODING_ADVICE = ("re-save it as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8 IN > OUT`), or, if you "
                   "know the encoding it was saved in, pass --encoding NAME (e.g. cp1252 for Excel on Windows, "
                   "latin-1)")
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by the surrogateescape error handler


def _codec(encoding: str) -> str:
    """The Python codec for a user's --encoding (UTF-8 also accepts Excel's byte-order mark)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}; use a Python codec name such as utf-8, cp1252 or "
                         "latin-1") from None
    return "utf-8-sig" if name == "utf-8" else name


def _culprit_cell(data: bytes, codec: str) -> str:
    """Where the first undecodable byte sits in the table: 'row R (COL0=ID), column C', or '' if unparsable."""
    try:
        table = pd.read_csv(io.StringIO(data.decode(codec, "surrogateescape")), dtype=str, keep_default_na=False,
                            engine="python")  # the C parser cannot hold the escaped bytes
    except (ValueError, pd.errors.ParserError):
        return ""
    bad_header = [c for c in table.columns if _UNDECODED.search(c)]
    if bad_header:
        return "in the header row"
    for column in table.columns:
        bad = table[column].str.contains(_UNDECODED)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            first = table.columns[0]
            named = "" if column == first else f" ({first}={table[first].iloc[row][:60]!r})"
            return f"in row {row}{named}, column {column!r}"
    return ""


def decode_error(path: Path, data: bytes, err: UnicodeDecodeError, encoding: str, codec: str) -> str:
    """An error message naming the file, line, byte position, row and column of an undecodable byte."""
    line = data.count(b"\n", 0, err.start) + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1)
    where = _culprit_cell(data, codec)
    return (f"{path}: not valid {encoding} text: byte 0x{data[err.start]:02x} at byte {err.start} of the file "
            f"(line {line}, byte {column} of the line){' ' + where if where else ''}; {ENCODING_ADVICE}")


def read_text_csv(path: str | Path, encoding: str = "utf-8", **options) -> pd.DataFrame:
    """A CSV table decoded with `encoding` (never guessed); errors name the file and, for bad bytes, the row."""
    path = Path(path)
    codec = _codec(encoding)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as err:
        raise ValueError(decode_error(path, data, err, encoding, codec)) from None
    if not text.strip():
        raise ValueError(f"{path} is empty: expected a CSV file with a header row")
    try:
        return pd.read_csv(io.StringIO(text), **options)
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not a readable CSV table: {err}") from None


# ------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m data_prep label-reports`."""
    parser.add_argument("--in", dest="input", required=True, type=Path, help="CSV file with one report per row")
    parser.add_argument("--text-column", required=True, help="name of the column holding the report text")
    parser.add_argument("--out", required=True, type=Path, help="CSV to write: the input rows plus a column per class")
    parser.add_argument("--negation", action="store_true", help="use the negation/uncertainty-aware variant")
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of --in (default utf-8; e.g. cp1252 for a CSV saved by Excel on Windows)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def label_csv(input_path: Path, text_column: str, negation: bool, encoding: str = "utf-8") -> pd.DataFrame:
    """The rows of `input_path` (read with `encoding`) plus one 1/0 column per class labeled from `text_column`."""
    table = read_text_csv(input_path, encoding, dtype=str, keep_default_na=False)
    if text_column not in table.columns:
        raise ValueError(f"{input_path}: no column {text_column!r}; columns are {list(table.columns)}")
    clashing = [c for c in CLASSES if c in table.columns]
    if clashing:
        raise ValueError(f"{input_path}: already has label column(s) {clashing}; rename them first")
    return pd.concat([table, label_reports(table[text_column], negation=negation)], axis=1)


def main(args: argparse.Namespace) -> int:
    """Label a CSV of reports and write it with one 1/0 column per class."""
    check_output(args.out, args.force, "label-reports", args.input)
    try:
        labeled = label_csv(args.input, args.text_column, args.negation, args.encoding)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise SystemExit(f"label-reports: {err}") from err
    atomic_write(args.out, lambda stream: labeled.to_csv(stream, index=False))
    counts = ", ".join(f"{c}={int(labeled[c].sum())}" for c in CLASSES)
    print(f"labeled {len(labeled)} reports -> {args.out} ({counts})")
    return 0


def check_output(out: Path, force: bool, command: str, source: Path | None = None) -> None:
    """Stop before any work when --out is a folder, is the input itself, or exists without --force."""
    if out.is_dir():
        raise SystemExit(f"{command}: --out {out} is a folder; give the path of a CSV file to write")
    if source is not None and out.exists() and out.resolve() == source.resolve():
        raise SystemExit(f"{command}: --out {out} is the input file; write the result to another file")
    if out.exists() and not force:
        raise SystemExit(f"{command}: {out} exists; pass --force to overwrite it")
