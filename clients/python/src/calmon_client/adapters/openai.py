"""OpenAI-compatible completions with log-probabilities (the OpenAI SDK, vLLM, llama.cpp server,
LiteLLM, ...): chat ``choices[i].logprobs.content[*].logprob``, legacy completions
``choices[i].logprobs.token_logprobs``, and streamed chunks of either."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from calmon_client.adapters.fields import ScoreFields, field

__all__ = ["from_openai", "from_openai_stream"]

_ASK = "ask for them: chat.completions.create(..., logprobs=True) or completions.create(..., logprobs=1)"


def _choice(response: Any, index: int) -> Any:
    choices = field(response, "choices") or []
    for choice in choices:
        if (field(choice, "index") or 0) == index:
            return choice
    if index < len(choices):
        return choices[index]
    raise ValueError(f"the response has no choice {index}")


def _logprobs_of(choice: Any) -> list[float]:
    logprobs = field(choice, "logprobs")
    if logprobs is None:
        return []
    content = field(logprobs, "content")
    if content is not None:  # chat completions
        return [float(field(token, "logprob")) for token in content]
    legacy = field(logprobs, "token_logprobs")  # completions; None for an echoed first prompt token
    return [float(value) for value in legacy or [] if value is not None]


def from_openai(response: Any, choice: int = 0) -> ScoreFields:
    """``token_logprobs`` of one choice of a (chat) completion, SDK object or parsed JSON."""
    values = _logprobs_of(_choice(response, choice))
    if not values:
        raise ValueError(f"choice {choice} carries no token log-probabilities; {_ASK}")
    return {"token_logprobs": values}


def from_openai_stream(chunks: Iterable[Any], choice: int = 0) -> ScoreFields:
    """``token_logprobs`` gathered from streamed chunks (``stream=True``), in order."""
    values: list[float] = []
    for chunk in chunks:
        for item in field(chunk, "choices") or []:
            if (field(item, "index") or 0) == choice:
                values.extend(_logprobs_of(item))
    if not values:
        raise ValueError(f"no chunk of choice {choice} carried token log-probabilities; {_ASK}")
    return {"token_logprobs": values}
