"""`groker publish -` in batches: consecutive stdin lines grouped into one POST
/messages/batch each, and what the broker says about a batch traced back to its lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from groker_cli.keys import new_key

# A batch is closed before its request would pass this many bytes of JSON: below the
# broker's default GROKER_MAX_BODY_BYTES (1 MiB, then 413), with room for the envelope.
MAX_BATCH_BYTES = 900_000
# Where the broker's 400 names a message of the batch: `messages.3.body`.
_MESSAGE_FIELD = re.compile(r"messages\.(\d+)(\..*)?")


@dataclass
class Batch:
    """Consecutive non-blank stdin lines, each as the message it is published as."""

    line_numbers: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0  # bytes of the messages' JSON, separators included

    def add(self, line_number: int, message: dict[str, Any], size: int) -> None:
        self.line_numbers.append(line_number)
        self.messages.append(message)
        self.size += size

    def key(self, base: str | None) -> str:
        """`base-<first line>-<last line>`: the same input with the same --batch makes the
        same batches, so a rerun is answered with what was published already."""
        if base is None:
            return new_key()
        return f"{base}-{self.line_numbers[0]}-{self.line_numbers[-1]}"

    def where(self, answer: Any = None) -> str:
        """The stdin line the broker's error `answer` names (`messages.<i>...`), or else
        every line of the batch."""
        index = refused_index(answer)
        if index is not None and index < len(self.line_numbers):
            return f"stdin line {self.line_numbers[index]}"
        first, last = self.line_numbers[0], self.line_numbers[-1]
        return f"stdin line {first}" if first == last else f"stdin lines {first}-{last}"


def refused_index(answer: Any) -> int | None:
    """The index of the first message a 400 answer names in its `detail`, if any."""
    detail = answer.get("detail") if isinstance(answer, dict) else None
    for problem in detail if isinstance(detail, list) else ():
        name = problem.get("field") if isinstance(problem, dict) else None
        match = _MESSAGE_FIELD.fullmatch(name) if isinstance(name, str) else None
        if match:
            return int(match.group(1))
    return None


def group(messages: Iterable[tuple[int, dict[str, Any]]], most: int) -> Iterator[Batch]:
    """Numbered messages in batches of `most`, a batch closed early rather than pass
    MAX_BATCH_BYTES (a message that large alone goes in a batch of its own). A full batch
    is handed on at once, before the next line is read."""
    batch = Batch()
    for line_number, message in messages:
        # As requests encodes it (ASCII, default separators), plus the comma after it.
        size = len(json.dumps(message)) + 2
        if batch.messages and batch.size + size > MAX_BATCH_BYTES:
            yield batch
            batch = Batch()
        batch.add(line_number, message, size)
        if len(batch.messages) >= most:
            yield batch
            batch = Batch()
    if batch.messages:
        yield batch
