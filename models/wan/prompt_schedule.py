"""A prompt per chunk index: which prompt a stream uses for each chunk, switched with LongLive's KV re-cache.

The schedule text has one entry per line, `chunk: prompt` (e.g. `0: a cat walking`, `8: a dog running`);
chunk is the stream's chunk index (0 = the first chunk of the stream, prefilled chunks included) from which
the prompt holds until the next entry. Blank lines and lines starting with `#` are skipped.
"""

import re
from dataclasses import dataclass

_ENTRY = re.compile(r"^\s*(\d+)\s*:\s*(.*?)\s*$")


def parse_prompt_schedule(text: str) -> list:
    """`chunk: prompt` lines -> [(chunk, prompt)] sorted by chunk; a clear error for a line that does not fit."""
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ValueError(f"prompt schedule line {number} ({line.strip()!r}) is not 'chunk: prompt'; write e.g. "
                             "'0: a cat walking' (chunk = the stream's chunk index from which the prompt holds)")
        chunk, prompt = int(match.group(1)), match.group(2)
        if not prompt:
            raise ValueError(f"prompt schedule line {number} gives chunk {chunk} an empty prompt")
        if chunk in entries:
            raise ValueError(f"prompt schedule line {number}: chunk {chunk} is given twice")
        entries[chunk] = prompt
    if not entries:
        raise ValueError("the prompt schedule is empty: write one 'chunk: prompt' per line, e.g. '0: a cat walking'")
    return sorted(entries.items())


@dataclass(frozen=True)
class PromptSchedule:
    """Prompt embeddings by starting chunk: ((chunk, embedding [1, L, D]), ...), sorted by chunk."""

    entries: tuple

    def __post_init__(self):
        chunks = [chunk for chunk, _ in self.entries]
        if not chunks or chunks != sorted(set(chunks)) or chunks[0] < 0:
            raise ValueError(f"a prompt schedule needs distinct, increasing chunk indices >= 0, got {chunks}")

    def at(self, chunk: int):
        """The embedding that holds at this chunk index, or None before the first entry."""
        current = None
        for start, embedding in self.entries:
            if start > chunk:
                break
            current = embedding
        return current
