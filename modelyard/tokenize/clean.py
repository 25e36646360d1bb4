"""Text cleaning as HF normalizers, so tokenizer.json replays it in the runtime unchanged."""

from __future__ import annotations

from tokenizers import Regex, normalizers

from modelyard.config import CleanConfig

# Unescaped after the tags are gone, so "&lt;b&gt;" stays visible text; "&amp;" goes last so
# "&amp;lt;" becomes the literal "&lt;" (one level of unescaping, as html.unescape does).
_ENTITIES: tuple[tuple[str, str], ...] = (
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&quot;", '"'),
    ("&#39;", "'"),
    ("&#x27;", "'"),
    ("&nbsp;", " "),
    ("&amp;", "&"),
)


def clean_normalizers(clean: CleanConfig) -> list[normalizers.Normalizer]:
    """The normalizers that implement ``clean``, in the order they must run.

    Args:
        clean: which cleaning steps to apply.

    Returns:
        A list (possibly empty) of normalizers: unicode form, HTML stripping, lowercase.
    """
    steps: list[normalizers.Normalizer] = []
    if clean.unicode == "NFC":
        steps.append(normalizers.NFC())
    elif clean.unicode == "NFKC":
        steps.append(normalizers.NFKC())
    if clean.strip_html:
        # a tag such as <br /> separates words, so it becomes a space rather than nothing
        steps.append(normalizers.Replace(Regex(r"<[^<>]*>"), " "))
        steps.extend(normalizers.Replace(entity, text) for entity, text in _ENTITIES)
    if clean.lowercase:
        steps.append(normalizers.Lowercase())
    return steps


def char_class(chars: str) -> Regex:
    """A regex matching any one of ``chars``, each written as a ``\\x{..}`` escape.

    Hex escapes keep characters such as ``\\``, ``]`` or a tab from changing the pattern.
    """
    return Regex("[" + "".join(f"\\x{{{ord(c):X}}}" for c in chars) + "]")


def sequence(steps: list[normalizers.Normalizer]) -> normalizers.Normalizer | None:
    """``steps`` as one normalizer (``None`` when there is nothing to do)."""
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]
    return normalizers.Sequence(steps)
