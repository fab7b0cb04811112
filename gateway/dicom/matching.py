"""Value normalization for QIDO matching, shared by the query parser and the index adapters.

Indexes store values in the same normalized form the parser produces for query values, so that
matching is plain equality, GLOB or string comparison in SQL:

* person names: :func:`fold_case` (case-insensitive matching, always) and :func:`name_words`
  (case- and accent-insensitive word list, for ``fuzzymatching=true``);
* DA / TM / DT: :func:`temporal_bounds` turns a possibly partial value into the interval it
  denotes, as fixed-width strings that compare correctly as text;
* wildcards: :func:`dicom_glob` turns a PS3.4 C.2.2.2.4 pattern into an SQLite GLOB pattern.
"""

from __future__ import annotations

import re
import unicodedata

# ---------------------------------------------------------------------------------------------
# Person names
# ---------------------------------------------------------------------------------------------

# Name components (PS3.5 6.2.1) are split at '^'; people also type spaces, commas, hyphens.
_NAME_SEPARATORS = re.compile(r"[\s^=,.\-]+")


def alphabetic(value: str) -> str:
    """The alphabetic component group of a PN value as sent in a query (``A=I=P``)."""
    return value.split("=", 1)[0]


def fold_case(text: str) -> str:
    """Case-insensitive form of a name; accents are kept."""
    return unicodedata.normalize("NFC", text).casefold()


def fold_name(text: str) -> str:
    """Stored and query form of a name for case-insensitive matching: trailing empty components
    are insignificant (PS3.5 6.2.1.1), so ``Smith^John^^`` equals ``smith^john``."""
    return fold_case(text).rstrip("^ ")


def fold_accents(text: str) -> str:
    """Case- and accent-insensitive form: 'Müller' and 'MULLER' both become 'muller'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def name_words(text: str) -> list[str]:
    """The accent-folded words of a name or of a fuzzy query value, in order."""
    return [w for w in _NAME_SEPARATORS.split(fold_accents(text)) if w]


def name_words_column(text: str) -> str:
    """Stored form for fuzzy matching: each word preceded by one space, so that "some word
    starts with w" is the GLOB ``* w*`` (see :func:`fuzzy_word_pattern`)."""
    return "".join(" " + w for w in name_words(text))


def fuzzy_word_pattern(word: str) -> str:
    """GLOB matching a :func:`name_words_column` value with a word starting with ``word``
    (``word`` may itself hold DICOM wildcards)."""
    return "* " + dicom_glob(word) + "*"


# ---------------------------------------------------------------------------------------------
# Wildcards (PS3.4 C.2.2.2.4)
# ---------------------------------------------------------------------------------------------

_GLOB_SPECIAL = {"*": "[*]", "?": "[?]", "[": "[[]"}


def glob_literal(text: str) -> str:
    """GLOB pattern matching exactly ``text`` ('%' and '_' are not special in GLOB)."""
    return "".join(_GLOB_SPECIAL.get(c, c) for c in text)


def dicom_glob(pattern: str) -> str:
    """GLOB pattern for a DICOM wildcard value: '*' any run, '?' one character, the rest literal.
    GLOB rather than LIKE because DICOM matching is case-sensitive (PS3.4 C.2.2.2.1)."""
    return "".join(c if c in "*?" else _GLOB_SPECIAL.get(c, c) for c in pattern)


_LIKE_SPECIAL = {"%": "\\%", "_": "\\_", "\\": "\\\\", "*": "%", "?": "_"}


def dicom_like(pattern: str) -> str:
    """SQL LIKE pattern (backslash escape) for a DICOM wildcard value: the LIKE counterpart of
    :func:`dicom_glob`, for databases without GLOB (PostgreSQL). Case-sensitive like GLOB as
    long as the column is (a deterministic collation; ``C`` also lets a prefix use an index)."""
    return "".join(_LIKE_SPECIAL.get(c, c) for c in pattern)


def fuzzy_word_like(word: str) -> str:
    """LIKE counterpart of :func:`fuzzy_word_pattern`."""
    return "% " + dicom_like(word) + "%"


# ---------------------------------------------------------------------------------------------
# Dates and times (PS3.5 6.2, PS3.4 C.2.2.2.5)
# ---------------------------------------------------------------------------------------------

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", re.ASCII)
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?", re.ASCII)


def temporal_bounds(vr: str, value: str) -> tuple[str, str] | None:
    """The first and last instant a DA/TM/DT value denotes, as fixed-width comparable strings,
    or None when ``value`` is not a valid value of that VR.

    A partial value is the whole interval it names: TM ``1030`` is 10:30:00.000000 through
    10:30:59.999999, DT ``2024`` the whole year. DT UTC offsets are ignored (values compare as
    the local times they spell). Legacy ``YYYY.MM.DD`` dates and ``HH:MM:SS`` times are accepted
    because old files in the store still carry them.
    """
    if vr == "DA":
        m = _DA.fullmatch(value.replace(".", "") if len(value) == 10 else value)
        if m is None or not _valid_date(m.group(1), m.group(2), m.group(3)):
            return None
        return m.group(0), m.group(0)
    if vr == "TM":
        m = _TM.fullmatch(value.replace(":", ""))
        if m is None:
            return None
        hh, mm, ss, frac = m.groups()
        if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
            return None
        low = f"{hh}{mm or '00'}{ss or '00'}.{(frac or '').ljust(6, '0')}"
        high = f"{hh}{mm or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
        return low, high
    if vr == "DT":
        m = _DT.fullmatch(value)
        if m is None:
            return None
        y, mo, d, hh, mi, ss, frac = m.groups()
        low = f"{y}{mo or '01'}{d or '01'}{hh or '00'}{mi or '00'}{ss or '00'}.{(frac or '').ljust(6, '0')}"
        high = f"{y}{mo or '12'}{d or '31'}{hh or '23'}{mi or '59'}{ss or '59'}.{(frac or '').ljust(6, '9')}"
        return low, high
    return None


def normalize_temporal(vr: str, value: object) -> str | None:
    """Stored, comparable form of a DA/TM/DT value (its first instant), None when invalid."""
    if not isinstance(value, str):
        return None
    bounds = temporal_bounds(vr, value.strip())
    return None if bounds is None else bounds[0]


def _valid_date(year: str, month: str, day: str) -> bool:
    return 1 <= int(month) <= 12 and 1 <= int(day) <= 31 and year != "0000"
